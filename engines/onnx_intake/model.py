"""Read an ONNX classifier and bring it to the one form the rest of the intake works on.

That form: one float32 input (batch, C, H, W) with a dynamic batch, taking images in
[0, 1] (any normalization the user names is added in the graph), and one output of
logits (batch, classes). NHWC inputs get a transpose in front; a fixed batch becomes
dynamic (reshapes that spell the batch out copy it from their input instead) and is then
checked to give the same answers row by row; a final softmax is dropped so the exits'
temperatures scale logits. Anything else is refused with the reason, in one line.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from edge.errors import UserError

MIN_OPSET = 11  # the exit heads are written with ops of this opset and later
LAYOUTS = ("auto", "nchw", "nhwc")


class OnnxIntakeError(UserError):
    """The ONNX model cannot be taken in as it is; the message says why."""


@dataclass(frozen=True)
class InputOptions:
    """How the model's input is to be read; a user's flags."""

    layout: str = "auto"  # "nchw", "nhwc", or "auto": told apart by where 1 or 3 channels sit
    mean: tuple[float, ...] = ()  # per channel, applied in the graph: (x - mean) / std on [0, 1] images
    std: tuple[float, ...] = ()
    output: str | None = None  # the logits output, where the model has several


@dataclass
class OnnxClassifier:
    model: onnx.ModelProto  # the one form: NCHW float input, dynamic batch, logits output
    source: Path
    input_name: str
    logits: str
    input_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    layout: str  # the file's: "nchw" or "nhwc"
    fixed_batch: int | None  # the batch the file had fixed (now dynamic), or None
    opset: int
    normalization: dict[str, Any] = field(default_factory=dict)
    prepended: int = 0  # nodes added in front of the model's own (normalization, layout)

    def session(self) -> Any:
        return open_model_session(self.model, self.source)

    def describe(self) -> dict[str, Any]:
        return {
            "source": str(self.source), "input": [self.input_name, list(self.input_shape)], "logits": self.logits,
            "classes": self.num_classes, "layout": self.layout, "fixed_batch": self.fixed_batch, "opset": self.opset,
        }


def load_classifier(path: Path | str, options: InputOptions = InputOptions()) -> OnnxClassifier:
    path = Path(path)
    model = read_model(path)
    opset = default_opset(model)
    if opset < MIN_OPSET:
        raise OnnxIntakeError(f"{path}: opset {opset}; the intake needs opset {MIN_OPSET} or newer (re-export, or onnx.version_converter)")
    open_model_session(model, path)  # onnxruntime must take the file as it is
    name_nodes(model)
    input_info = _single_input(model, path)
    logits = _logits_output(model, path, options.output)
    dims = _dims(input_info, path)
    layout = _layout(dims, options.layout, path)
    fixed = _make_batch_dynamic(model, input_info, dims[0])
    sizes = [int(d) for d in dims[1:]]  # _dims checked them
    channels, height, width = (sizes[0], sizes[1], sizes[2]) if layout == "nchw" else (sizes[2], sizes[0], sizes[1])
    nodes = len(model.graph.node)
    input_name, normalization = _prepend_input(model, input_info.name, layout, (channels, height, width), options, path)
    classifier = OnnxClassifier(model, path, input_name, logits, (channels, height, width), 0, layout, fixed, opset,
                                normalization, prepended=len(model.graph.node) - nodes)
    classifier.num_classes = _check_runs(classifier)
    return classifier


def read_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise OnnxIntakeError(f"{path}: no such ONNX file")
    try:
        return onnx.load(str(path))
    except Exception as exc:  # protobuf's DecodeError, or a missing external-data file
        raise OnnxIntakeError(f"{path}: not a readable ONNX model ({_first_line(exc)})") from exc


def default_opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def open_model_session(model: onnx.ModelProto, source: Path) -> Any:
    """An onnxruntime session on the model as it stands (through the backend: one
    process-wide thread pool), or a one-line error saying onnxruntime refuses it."""
    import onnxruntime as ort

    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    try:
        return OnnxRuntimeBackend().open_session(model.SerializeToString())
    except Exception as exc:
        raise OnnxIntakeError(f"{source}: onnxruntime {ort.__version__} cannot load this model ({_first_line(exc.__cause__ or exc)})") from exc


def name_nodes(model: onnx.ModelProto) -> None:
    """Every node named, uniquely: cut points and error messages refer to them."""
    seen: set[str] = set()
    for index, node in enumerate(model.graph.node):
        if not node.name or node.name in seen:
            node.name = f"{node.op_type}_{index}"
        seen.add(node.name)


def unique_name(model: onnx.ModelProto, base: str) -> str:
    taken = {t for node in model.graph.node for t in (*node.input, *node.output, node.name)}
    taken |= {i.name for i in (*model.graph.input, *model.graph.output, *model.graph.initializer)}
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    return name


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    line = next((t.strip() for t in text if t.strip()), type(exc).__name__)
    return line[:300]


def _single_input(model: onnx.ModelProto, path: Path) -> onnx.ValueInfoProto:
    weights = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in weights]
    if len(inputs) != 1:
        raise OnnxIntakeError(f"{path}: the model takes {len(inputs)} inputs ({[i.name for i in inputs]}); an image classifier takes one")
    kind = inputs[0].type.tensor_type.elem_type
    if kind != TensorProto.FLOAT:
        raise OnnxIntakeError(f"{path}: input {inputs[0].name!r} is {TensorProto.DataType.Name(kind)}; the intake takes float32 images")
    return inputs[0]


def _logits_output(model: onnx.ModelProto, path: Path, wanted: str | None) -> str:
    """The logits tensor, made the graph's only output (a final softmax is dropped)."""
    outputs = [o.name for o in model.graph.output]
    if wanted is not None and wanted not in outputs:
        raise OnnxIntakeError(f"{path}: no output {wanted!r}; the model has {outputs}")
    if wanted is None and len(outputs) != 1:
        raise OnnxIntakeError(f"{path}: the model has {len(outputs)} outputs {outputs}; name the logits with --output")
    name = wanted or outputs[0]
    producer = next((n for n in model.graph.node if name in n.output), None)
    if producer is not None and producer.op_type == "Softmax":
        name = producer.input[0]
        model.graph.node.remove(producer)
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, None))
    return name


def _dims(info: onnx.ValueInfoProto, path: Path) -> list[int | str]:
    shape = info.type.tensor_type.shape
    dims: list[int | str] = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in shape.dim]
    if len(dims) != 4:
        raise OnnxIntakeError(f"{path}: input {info.name!r} has shape {dims}; an image classifier takes (batch, C, H, W) or (batch, H, W, C)")
    if not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise OnnxIntakeError(f"{path}: input {info.name!r} has shape {dims}; give it fixed channels, height and width (the engines are built for one size)")
    return dims


def _layout(dims: Sequence[int | str], wanted: str, path: Path) -> str:
    if wanted not in LAYOUTS:
        raise OnnxIntakeError(f"layout must be one of {LAYOUTS}, got {wanted!r}")
    if wanted != "auto":
        return wanted
    first, last = dims[1] in (1, 3, 4), dims[3] in (1, 3, 4)
    if first != last:
        return "nchw" if first else "nhwc"
    raise OnnxIntakeError(f"{path}: cannot tell NCHW from NHWC in input shape {list(dims)}; pass --layout nchw or nhwc")


def _make_batch_dynamic(model: onnx.ModelProto, info: onnx.ValueInfoProto, batch: int | str) -> int | None:
    """Mark the batch dimension of input and output as "batch"; returns the fixed batch it had."""
    info.type.tensor_type.shape.dim[0].dim_param = "batch"
    if not isinstance(batch, int):
        return None
    del model.graph.value_info[:]  # shapes inferred for the fixed batch; onnxruntime infers them again
    for node in model.graph.node:
        if node.op_type == "Reshape" and not any(a.name == "allowzero" and a.i for a in node.attribute):
            _copy_batch_in_reshape(model, node, batch)
    return batch


def _copy_batch_in_reshape(model: onnx.ModelProto, node: onnx.NodeProto, batch: int) -> None:
    """A reshape to (batch, ...) spelled with the fixed number, in a weight or a Constant
    node (as the TorchScript exporter writes it): 0 copies the input's batch instead."""
    target = _constant(model, node.input[1])
    if target is None or target.ndim != 1 or len(target) < 2 or target[0] != batch:
        return
    name = unique_name(model, f"{node.input[1]}_any_batch")
    model.graph.initializer.append(numpy_helper.from_array(np.concatenate([[0], target[1:]]).astype(np.int64), name))
    node.input[1] = name


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    weight = next((t for t in model.graph.initializer if t.name == name), None)
    if weight is not None:
        return numpy_helper.to_array(weight)
    producer = next((n for n in model.graph.node if n.op_type == "Constant" and name in n.output), None)
    value = next((a.t for a in producer.attribute if a.name == "value"), None) if producer is not None else None
    return numpy_helper.to_array(value) if value is not None else None


def _prepend_input(
    model: onnx.ModelProto, original: str, layout: str, chw: tuple[int, int, int], options: InputOptions, path: Path,
) -> tuple[str, dict[str, Any]]:
    """The input the engines take: (batch, C, H, W) in [0, 1]; the normalization and
    layout change the model needs go into the graph in front of its own first node."""
    normalization = _normalization(options, chw[0], path)
    if layout == "nchw" and not normalization:
        return original, {"applied": "in_graph"}
    graph = model.graph
    new_input = unique_name(model, "image")
    nodes, x = [], new_input
    if normalization:
        mean, std = (np.asarray(normalization[k], np.float32).reshape(1, -1, 1, 1) for k in ("mean", "std"))
        for op, value in (("Sub", mean), ("Div", std)):
            constant = unique_name(model, f"image_{op.lower()}")
            graph.initializer.append(numpy_helper.from_array(value, constant))
            out = unique_name(model, f"image_{op.lower()}ed")
            nodes.append(helper.make_node(op, [x, constant], [out], name=unique_name(model, f"normalize_{op.lower()}")))
            x = out
    if layout == "nhwc":
        nodes.append(helper.make_node("Transpose", [x], [original], perm=[0, 2, 3, 1], name=unique_name(model, "to_nhwc")))
    else:
        nodes.append(helper.make_node("Identity", [x], [original], name=unique_name(model, "to_model_input")))
    for k, node in enumerate(nodes):
        graph.node.insert(k, node)
    info = next(i for i in graph.input if i.name == original)
    graph.input.remove(info)
    graph.input.insert(0, helper.make_tensor_value_info(new_input, TensorProto.FLOAT, ["batch", *chw]))
    return new_input, {**normalization, "applied": "in_graph"}


def _normalization(options: InputOptions, channels: int, path: Path) -> dict[str, list[float]]:
    if not options.mean and not options.std:
        return {}
    mean, std = list(options.mean) or [0.0], list(options.std) or [1.0]
    for name, values in (("mean", mean), ("std", std)):
        if len(values) not in (1, channels):
            raise OnnxIntakeError(f"{path}: {name} has {len(values)} values; the input has {channels} channels (give 1 or {channels})")
    if any(s <= 0 for s in std):
        raise OnnxIntakeError(f"std must be positive, got {std}")
    return {"mean": mean * (channels // len(mean)), "std": std * (channels // len(std))}


def _check_runs(classifier: OnnxClassifier) -> int:
    """The converted model runs at batch 1 and 2, row by row alike, and outputs (batch, classes)."""
    path = classifier.source
    session = open_model_session(classifier.model, path)
    rng = np.random.default_rng(0)
    x = rng.random((2, *classifier.input_shape), dtype=np.float32)
    try:
        rows = [session.run(None, {classifier.input_name: x[i : i + 1]})[0] for i in range(2)]
        two = session.run(None, {classifier.input_name: x})[0]
    except Exception as exc:
        fixed = f" with its fixed batch {classifier.fixed_batch} made dynamic" if classifier.fixed_batch is not None else ""
        raise OnnxIntakeError(f"{path}: the model does not run{fixed} ({_first_line(exc)})") from exc
    if rows[0].ndim != 2 or rows[0].shape[1] < 2:
        raise OnnxIntakeError(f"{path}: output {classifier.logits!r} has shape {list(rows[0].shape)} at batch 1; a classifier outputs (batch, classes)")
    one = np.concatenate(rows)
    if two.shape != one.shape or not np.allclose(one, two, rtol=1e-4, atol=1e-4):
        built = f"its fixed batch {classifier.fixed_batch}" if classifier.fixed_batch is not None else "a batch size"
        raise OnnxIntakeError(f"{path}: {built} is built into the graph: a batch of 2 does not give each row's answer")
    return int(one.shape[1])
