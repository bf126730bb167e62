"""Where an ONNX graph can be cut: after a node where exactly one tensor crosses.

The nodes of an ONNX graph are stored in topological order, so the tensors crossing
the boundary after node i are those made at or before it and read after it (the
output counts as read at the end). Weights and constants are not counted: a segment
takes its own copy. A cut is offered where that set is one feature map (batch, C, H, W);
its prefix is timed by timing every piece between neighbouring cuts alone at batch 1,
interleaved round by round (latency, never FLOPs).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import TensorProto, helper

from edge.backends.onnx_prune import subgraph_inputs
from engines.intake.cuts import CutPoint, time_interleaved
from engines.onnx_intake.model import OnnxClassifier, OnnxIntakeError, open_model_session


def crossing_sets(model: onnx.ModelProto) -> list[list[str]]:
    """For each node, in order, the tensors that cross the boundary right after it."""
    graph = model.graph
    constant = {t.name for t in graph.initializer} | {o for n in graph.node if not n.input for o in n.output}
    last_read: dict[str, int] = {}
    for index, node in enumerate(graph.node):
        for name in (*node.input, *subgraph_inputs(node)):
            last_read[name] = index
    end = len(graph.node)
    for output in graph.output:
        last_read[output.name] = end
    live = {i.name for i in graph.input if i.name not in constant and last_read.get(i.name, -1) >= 0}
    crossing = []
    for index, node in enumerate(graph.node):
        live |= {o for o in node.output if o and o not in constant and last_read.get(o, -1) > index}
        live = {t for t in live if last_read.get(t, -1) > index}
        crossing.append(sorted(live))
    return crossing


def clean_cuts(classifier: OnnxClassifier) -> list[CutPoint]:
    """Every clean cut with a feature map crossing, in graph order (no timing yet)."""
    nodes = classifier.model.graph.node
    single = {}
    for index, live in enumerate(crossing_sets(classifier.model)[:-1]):
        if len(live) == 1 and live[0] not in single and live[0] != classifier.input_name:
            single[live[0]] = index
    shapes = probe_shapes(classifier, list(single))
    points = [  # not after the nodes added in front of the model: nothing of its own runs there
        CutPoint(index, name, [nodes[index].name], shapes[name])
        for name, index in single.items() if name in shapes and index >= classifier.prepended
    ]
    # Of a run of cuts one node apart at one shape (a residual add, then its ReLU) the last
    # is the block's output; the others would give the same exit for no less work.
    return [p for p, after in zip(points, [*points[1:], None]) if after is None or (after.index, after.shape) != (p.index + 1, p.shape)]


def probe_shapes(classifier: OnnxClassifier, names: Sequence[str]) -> dict[str, list[int]]:
    """Shapes (without the batch) of those `names` that are float feature maps, found by
    running the model on a batch of 2 with them as extra outputs."""
    x = np.random.default_rng(0).random((2, *classifier.input_shape), dtype=np.float32)
    return {
        n: list(v.shape[1:]) for n, v in tensor_values(classifier, names, x).items()
        if v.dtype == np.float32 and v.ndim == 4 and v.shape[0] == 2
    }


def tensor_values(classifier: OnnxClassifier, names: Sequence[str], images: np.ndarray) -> dict[str, np.ndarray]:
    """The values of graph tensors `names` on `images` (the model run with them as outputs)."""
    if not names:
        return {}
    probe = onnx.ModelProto()
    probe.CopyFrom(classifier.model)
    inferred = onnx.shape_inference.infer_shapes(probe).graph.value_info  # element types; float where unknown
    kinds = {v.name: v.type.tensor_type.elem_type or TensorProto.FLOAT for v in inferred}
    probe.graph.output.extend(helper.make_tensor_value_info(n, kinds.get(n, TensorProto.FLOAT), None) for n in names if n != classifier.logits)
    session = open_model_session(probe, classifier.source)
    fetched = [o.name for o in session.get_outputs()]
    values = dict(zip(fetched, session.run(fetched, {classifier.input_name: images})))
    return {n: values[n] for n in names}


def resolve_cuts(points: Sequence[CutPoint], wanted: Sequence[str], classifier: OnnxClassifier) -> list[CutPoint]:
    """The cut points named (tensor or node names), in graph order, or a one-line error
    saying why a name is not a clean cut."""
    by_name = {p.name: p for p in points} | {alias: p for p in points for alias in p.aliases}
    chosen = []
    for name in wanted:
        if name not in by_name:
            raise OnnxIntakeError(why_not_a_cut(classifier, name))
        chosen.append(by_name[name])
    return sorted({p.name: p for p in chosen}.values(), key=lambda p: p.index)


def why_not_a_cut(classifier: OnnxClassifier, name: str) -> str:
    graph = classifier.model.graph
    producer = next((k for k, n in enumerate(graph.node) if name in n.output or n.name == name), None)
    if producer is None:
        return f"{classifier.source}: no tensor or node {name!r} in the graph (edge-onnx {classifier.source.name} lists the cut points)"
    crossing = crossing_sets(classifier.model)[producer]
    if len(crossing) != 1:
        shown = ", ".join(crossing[:4]) + (", ..." if len(crossing) > 4 else "")
        return f"{name!r} is not a clean cut: {len(crossing)} tensors cross there ({shown}); a segment boundary needs exactly one"
    return f"{name!r} is not a feature map (batch, C, H, W), or it is the model's input or output: no exit goes there"


def time_cuts(classifier: OnnxClassifier, points: Sequence[CutPoint], rounds: int = 200, progress: bool = True) -> list[CutPoint]:
    """The cut points with their prefix latency measured: each piece between neighbouring
    cuts (and the last one to the logits) timed alone at batch 1, interleaved."""
    from engines.onnx_intake.segments import extract_segments, run_chain

    pieces = extract_segments(classifier, points)
    sessions = [open_model_session(p, classifier.source) for p in pieces]
    x = np.random.default_rng(0).random((1, *classifier.input_shape), dtype=np.float32)
    inputs = run_chain(sessions, x, keep_all=True)
    runs = [(s, s.get_inputs()[0].name, i) for s, i in zip(sessions, inputs)]
    piece_ms = time_interleaved(runs, rounds, progress)
    prefix = np.cumsum(piece_ms)
    total = float(prefix[-1])
    return [replace(p, prefix_ms=float(prefix[k]), prefix_share=float(prefix[k]) / total) for k, p in enumerate(points)]
