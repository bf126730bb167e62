"""Engines and the manifest from a cut ONNX classifier and its trained exit heads.

Each plain segment gets its exit head and scores written into its graph; every engine
is checked (features as the plain segment makes them, probabilities as torch's head
gives them on those features, the final ones as the model's own logits give them) and
the manifest is the one the PyTorch path writes: calibration, INT8, TensorRT, the
governor and edged take it as they take any other.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from edge.atomic import atomic_path, sha256_file
from edge.manifest import MANIFEST_NAME, ExitInfo, Manifest, OperatingPoint, TensorInfo, save_manifest
from engines.build import TOLERANCE, BuildOptions, ExportMismatchError, build_info, segment_info
from engines.export import FEATURES, PROBS, ExportedGraph, TensorSpec, segment_input_name
from engines.intake.cuts import CutPoint
from engines.onnx_intake.heads import exit_segment, static_engine
from engines.onnx_intake.model import OnnxClassifier, open_model_session
from engines.onnx_intake.segments import run_chain


@dataclass(frozen=True)
class ExitHeads:
    """What training made: one head per cut, and one temperature per exit (the final's last)."""

    cuts: list[CutPoint]
    heads: list[nn.Module]
    temperatures: list[float]


def build_onnx_engines(
    classifier: OnnxClassifier, plain: Sequence[onnx.ModelProto], exits: ExitHeads, classes: Sequence[str],
    out_dir: Path, real_inputs: np.ndarray, options: BuildOptions = BuildOptions(),
) -> Manifest:
    """segment_{k}.onnx with its exit, static.onnx, each checked; manifest.json written."""
    out_dir.mkdir(parents=True, exist_ok=True)
    heads: list[nn.Module | None] = [*exits.heads, None]
    graphs = []
    for k, (segment, head, t) in enumerate(zip(plain, heads, exits.temperatures)):
        engine = exit_segment(segment, head, t, classifier.num_classes, k, first=k == 0)
        graphs.append(_write(engine, out_dir / f"segment_{k}.onnx", segment_input_name(k) if k else classifier.input_name))
    check_engines(classifier, plain, graphs, exits, real_inputs)
    static = _write(static_engine(classifier.model, classifier.logits, classifier.num_classes), out_dir / "static.onnx", classifier.input_name)
    static_entry = {"file": static.path.name, "sha256": sha256_file(static.path)}
    manifest = describe_onnx(classifier, graphs, exits, classes, options, static_entry, out_dir)
    save_manifest(manifest, out_dir / MANIFEST_NAME)
    return manifest


def _write(model: onnx.ModelProto, path: Path, input_name: str) -> ExportedGraph:
    with atomic_path(path) as tmp:
        onnx.save(model, str(tmp))
    outputs = [TensorSpec(o.name, [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim]) for o in model.graph.output]
    shape = [d.dim_param or d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    return ExportedGraph(path, [TensorSpec(input_name, shape)], outputs)


def check_engines(
    classifier: OnnxClassifier, plain: Sequence[onnx.ModelProto], graphs: Sequence[ExportedGraph], exits: ExitHeads, real_inputs: np.ndarray,
) -> None:
    """Every engine, fed what the plain segment before it makes, against the plain
    segment (features) and torch's head at its temperature (probabilities)."""
    rng = np.random.default_rng(0)
    batches = [np.ascontiguousarray(real_inputs[:8], dtype=np.float32), rng.random((3, *classifier.input_shape), dtype=np.float32)]
    for batch in batches:
        x = batch
        for k, (segment, graph) in enumerate(zip(plain, graphs)):
            features = run_chain([open_model_session(segment, classifier.source)], x)[0]
            session = open_model_session(onnx.load(str(graph.path)), graph.path)
            got = dict(zip([o.name for o in graph.outputs], session.run(None, {graph.inputs[0].name: x})))
            logits = features if k == len(exits.heads) else _head_logits(exits.heads[k], features)
            expected = {PROBS: _softmax(logits / exits.temperatures[k])}
            if FEATURES in got:
                expected[FEATURES] = features
            _compare(graph.path, got, expected)
            x = features


def _head_logits(head: nn.Module, features: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return head.eval()(torch.from_numpy(features)).numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _compare(path: Path, got: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    for name, want in expected.items():
        diff = float(np.max(np.abs(got[name] - want))) / max(1.0, float(np.max(np.abs(want))))
        if not diff <= TOLERANCE:
            raise ExportMismatchError(f"{path}: {name} differs from the expected by {diff:.3g} (more than {TOLERANCE})")


def describe_onnx(
    classifier: OnnxClassifier, graphs: Sequence[ExportedGraph], exits: ExitHeads, classes: Sequence[str],
    options: BuildOptions, static: dict[str, str], out_dir: Path,
) -> Manifest:
    early = len(exits.cuts)
    points = [OperatingPoint("full", [None] * early)]
    names = [c.name for c in exits.cuts] + ["final"]
    build: dict[str, Any] = {**build_info(), "source": {"onnx": classifier.describe()}}
    return Manifest(
        name=options.name,
        input=TensorInfo(classifier.input_name, ["batch", *classifier.input_shape]),
        value_range=[0.0, 1.0],
        normalization=classifier.normalization,
        classes=list(classes),
        segments=[segment_info(k, g) for k, g in enumerate(graphs)],
        exits=[ExitInfo(k, name, temperature=float(t)) for k, (name, t) in enumerate(zip(names, exits.temperatures))],
        operating_points=points,
        default_operating_point=points[0].name,
        batch={"min": 1, "opt": options.opt_batch, "max": options.max_batch},
        build=build,
        static_model=static,
        whole_model=static,  # the chain's network is the model itself: exits on a frozen backbone
        root=out_dir,
    )


