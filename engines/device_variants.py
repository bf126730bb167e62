"""The ONNX variants TensorRT 11.x builds FP16 and INT8 plans from.

11.x removed the FP16 and INT8 builder flags: a plan has the precision its graph's types
say. So a manifest meant for a device gains, per segment,
  fp16  the graph in float16 (onnxconverter-common), its input and outputs still float32
        (the runtime's buffers are), and the exit's scores computed in float32: every
        node from the softmax on stays fp32, so thresholds mean what they meant;
  int8  symmetric Q/DQ (onnxruntime's quantizer, int8 activations and weights, zero
        points 0), which TensorRT requires, in place of edge-calibrate's asymmetric
        CPU variant; calibrated on the inputs each segment really sees.
Both also run on onnxruntime, where they are checked against fp32. They are written to
a copy of the engines folder, so the CPU manifest and its INT8 engines stay as they were.
"""

from __future__ import annotations

import dataclasses
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import atomic_path, sha256_file
from edge.deps import require
from edge.errors import UserError
from edge.manifest import MANIFEST_NAME, Manifest, load_manifest, save_manifest
from engines.quantize import QuantJob, quantize_segments
from engines.tensorrt_build import qdq_problems

FP16, INT8 = "fp16", "int8"
_SCORE_STARTS = ("Softmax", "LogSoftmax")  # an exit's scores: these and everything after them stay fp32


def fp16_model(model: Any) -> Any:
    """`model` in float16 but for its input, outputs and exit scores (float32)."""
    float16 = require("onnxconverter_common.float16", "device", "FP16 variants")
    model = _outputs_isolated(_copy(model))
    del model.graph.value_info[:]  # the exporter's float32 annotations would contradict the converted nodes
    converted = float16.convert_float_to_float16(model, keep_io_types=True, node_block_list=_score_nodes(model))
    return _outputs_float32(_without_round_trips(converted))


def write_fp16(source: Path, target: Path) -> None:
    import onnx

    converted = fp16_model(onnx.load(str(source)))
    with atomic_path(target) as tmp:
        onnx.save(converted, str(tmp))


def device_engines(engines: Path, out: Path, inputs: Sequence[np.ndarray]) -> Manifest:
    """A copy of the engines folder at `out` whose segments gain an fp16 and a symmetric
    int8 variant; `inputs[k]` are segment k's calibration inputs."""
    if out.exists():
        raise UserError(f"{out} exists: device engines go to a new folder")
    source = load_manifest(engines)
    if len(inputs) != source.num_exits:
        raise ValueError(f"need calibration inputs for each of the {source.num_exits} segments, got {len(inputs)}")
    shutil.copytree(engines, out)
    try:
        return _add_variants(load_manifest(out), out, inputs)
    except BaseException:
        shutil.rmtree(out, ignore_errors=True)  # a half-made folder would only be refused next time
        raise


def _add_variants(manifest: Manifest, out: Path, inputs: Sequence[np.ndarray]) -> Manifest:
    jobs = [
        QuantJob(manifest.path_of(s.file), out / f"{Path(s.file).stem}.int8-symmetric.onnx", s.input.name, x, "int8", symmetric=True)
        for s, x in zip(manifest.segments, inputs)
    ]
    quantize_segments(jobs)
    segments = []
    for segment, job in zip(manifest.segments, jobs):
        _check_symmetric(job.target)
        fp16 = out / f"{Path(segment.file).stem}.fp16.onnx"
        write_fp16(manifest.path_of(segment.file), fp16)
        variants = {**segment.variants, FP16: _entry(fp16), INT8: _entry(job.target)}
        segments.append(dataclasses.replace(segment, variants=variants))
    updated = dataclasses.replace(manifest, segments=segments)
    save_manifest(updated, out / MANIFEST_NAME)
    return load_manifest(out)


def _entry(path: Path) -> dict[str, str]:
    return {"file": path.name, "sha256": sha256_file(path)}


def _check_symmetric(path: Path) -> None:
    import onnx

    problems = qdq_problems(onnx.load(str(path)))
    if problems:
        raise RuntimeError(f"{path}: the quantizer left asymmetric Q/DQ ({problems[0]})")


def _copy(model: Any) -> Any:
    import onnx

    copied = onnx.ModelProto()
    copied.CopyFrom(model)
    return copied


def _outputs_isolated(model: Any) -> Any:
    """A graph output that other nodes also read gets its own Identity: the converter
    casts outputs back to float32 and would otherwise feed the cast to the readers."""
    from onnx import helper

    outputs = {o.name for o in model.graph.output}
    read = {name for node in model.graph.node for name in node.input}
    for name in sorted(outputs & read):
        inner = f"{name}__inner"
        for node in model.graph.node:
            node.output[:] = [inner if o == name else o for o in node.output]
            node.input[:] = [inner if i == name else i for i in node.input]
        model.graph.node.append(helper.make_node("Identity", [inner], [name], name=f"{name}__output"))
    return model


def _without_round_trips(model: Any) -> Any:
    """The converter rounds every blocked node's output to float16 and back before the
    next blocked node reads it: those reads take the float32 value itself."""
    from onnx import TensorProto

    def cast_to(node: Any) -> int | None:
        return next((a.i for a in node.attribute if a.name == "to"), None) if node.op_type == "Cast" else None

    producers = {out: node for node in model.graph.node for out in node.output}
    for node in model.graph.node:
        before = producers.get(node.input[0]) if node.input else None
        if cast_to(node) == TensorProto.FLOAT and before is not None and cast_to(before) == TensorProto.FLOAT16:
            node.op_type = "Identity"
            node.input[0] = before.input[0]
            del node.attribute[:]
    read = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    unused = [n for n in model.graph.node if n.op_type == "Cast" and not any(o in read for o in n.output)]
    for node in unused:
        model.graph.node.remove(node)
    return model


def _outputs_float32(model: Any) -> Any:
    """The converter leaves outputs fed by blocked (float32) nodes declared, and cast to,
    float16: they end as float32, as the runtime's buffers and the manifest say."""
    from onnx import TensorProto, helper

    producers = {out: node for node in model.graph.node for out in node.output}
    for output in model.graph.output:
        if output.type.tensor_type.elem_type != TensorProto.FLOAT16:
            continue
        output.type.tensor_type.elem_type = TensorProto.FLOAT
        node = producers[output.name]
        if node.op_type == "Cast":
            del node.attribute[:]
            node.attribute.append(helper.make_attribute("to", TensorProto.FLOAT))
        else:
            inner = f"{output.name}__half"
            node.output[:] = [inner if o == output.name else o for o in node.output]
            model.graph.node.append(helper.make_node("Cast", [inner], [output.name], to=TensorProto.FLOAT))
    return model


def _score_nodes(model: Any) -> list[str]:
    """The nodes from each softmax on: the exit's probabilities, entropy, max-prob, gate."""
    readers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)
    todo = [n for n in model.graph.node if n.op_type in _SCORE_STARTS]
    seen: dict[str, Any] = {}
    while todo:
        node = todo.pop()
        if node.name in seen:
            continue
        seen[node.name] = node
        todo += [r for out in node.output for r in readers.get(out, [])]
    return sorted(seen)
