"""Exit heads and exit scores written as ONNX nodes into a segment's own graph.

The heads are trained in torch (engines.heads) and written here node by node, in ops
every opset from 11 has, so they join a graph of whatever opset the user's model uses
without converting it. The scores are those of engines.export.ExitScores: probabilities
at a temperature, their entropy in nats and 1 - the largest probability.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from edge.errors import UserError
from engines.export import ENTROPY, FEATURES, MAXPROB, PROBS
from engines.onnx_intake.model import default_opset, unique_name

FEATURES_IN = "features_in"  # engines.export.segment_input_name for every segment after the first


class _Writer:
    """Appends nodes and weights to a graph under names no one else uses."""

    def __init__(self, model: onnx.ModelProto, prefix: str) -> None:
        self.model, self.prefix = model, prefix

    def name(self, base: str) -> str:
        return unique_name(self.model, f"{self.prefix}{base}")

    def weight(self, base: str, value: np.ndarray) -> str:
        name = self.name(base)
        self.model.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(self, op: str, inputs: Sequence[str], **attributes: Any) -> str:
        out = self.name(op.lower())
        self.model.graph.node.append(helper.make_node(op, list(inputs), [out], name=self.name(f"{op}_node"), **attributes))
        return out


def append_head(model: onnx.ModelProto, features: str, head: nn.Module, prefix: str) -> str:
    """The head's nodes reading `features`; returns its logits tensor."""
    writer = _Writer(model, prefix)
    x = features
    modules = [m for m in head.modules() if not isinstance(m, nn.Sequential)]
    k = 0
    while k < len(modules):
        module = modules[k]
        following = modules[k + 1] if k + 1 < len(modules) else None
        if isinstance(module, nn.Conv2d) and isinstance(following, nn.BatchNorm2d):
            x, k = _conv(writer, x, module, following), k + 2
            continue
        x, k = _layer(writer, x, module), k + 1
    return x


def _layer(writer: _Writer, x: str, module: nn.Module) -> str:
    if isinstance(module, nn.Conv2d):
        return _conv(writer, x, module, None)
    if isinstance(module, nn.ReLU):
        return writer.node("Relu", [x])
    if isinstance(module, nn.AdaptiveAvgPool2d | nn.AdaptiveMaxPool2d) and module.output_size in (1, (1, 1)):
        return writer.node("GlobalAveragePool" if isinstance(module, nn.AdaptiveAvgPool2d) else "GlobalMaxPool", [x])
    if isinstance(module, nn.Flatten):
        return writer.node("Flatten", [x], axis=1)
    if isinstance(module, nn.Linear):
        weight = writer.weight("weight", _array(module.weight))
        bias = writer.weight("bias", _array(module.bias))
        return writer.node("Gemm", [x, weight, bias], transB=1)
    raise UserError(f"an exit head on an ONNX model cannot hold {type(module).__name__} (feature-map heads only)")


def _conv(writer: _Writer, x: str, conv: nn.Conv2d, bn: nn.BatchNorm2d | None) -> str:
    """A convolution with the batch norm after it folded in (eval statistics)."""
    weight = _array(conv.weight)
    bias = _array(conv.bias) if conv.bias is not None else np.zeros(weight.shape[0], np.float32)
    if bn is not None:
        scale = _array(bn.weight) / np.sqrt(_array(bn.running_var) + bn.eps)
        weight = weight * scale[:, None, None, None]
        bias = (bias - _array(bn.running_mean)) * scale + _array(bn.bias)
    stride, padding = conv.stride, conv.padding
    assert isinstance(padding, tuple), "exit heads pad by numbers"
    return writer.node(
        "Conv", [x, writer.weight("conv_weight", weight.astype(np.float32)), writer.weight("conv_bias", bias.astype(np.float32))],
        kernel_shape=list(conv.kernel_size), strides=list(stride), pads=[*padding, *padding],
    )


def _array(tensor: torch.Tensor | None) -> np.ndarray:
    assert tensor is not None
    return tensor.detach().cpu().numpy().astype(np.float32)


def append_scores(model: onnx.ModelProto, logits: str, temperature: float, num_classes: int, prefix: str) -> dict[str, str]:
    """probs, entropy and maxprob of `logits` at `temperature`; returns their tensors by output name."""
    writer = _Writer(model, prefix)
    scaled = writer.node("Div", [logits, writer.weight("temperature", np.array(temperature, np.float32))])
    log_probs = writer.node("LogSoftmax", [scaled], axis=1)
    probs = writer.node("Exp", [log_probs])
    weighted = writer.node("Mul", [probs, log_probs])
    entropy = writer.node("Neg", [writer.node("MatMul", [weighted, writer.weight("ones", np.ones(num_classes, np.float32))])])
    if default_opset(model) >= 18:  # the axes moved from an attribute to an input
        largest = writer.node("ReduceMax", [probs, writer.weight("axes", np.array([1], np.int64))], keepdims=0)
    else:
        largest = writer.node("ReduceMax", [probs], axes=[1], keepdims=0)
    maxprob = writer.node("Sub", [writer.weight("one", np.array(1.0, np.float32)), largest])
    return {PROBS: probs, ENTROPY: entropy, MAXPROB: maxprob}


def set_outputs(model: onnx.ModelProto, tensors: dict[str, str], shapes: dict[str, list[int | str]]) -> None:
    """Make `tensors` (output name -> tensor) the graph's outputs, renamed to their output
    names (no Identity copies: an output onnxruntime must copy costs microseconds)."""
    graph = model.graph
    del graph.output[:]
    for name, tensor in tensors.items():
        rename_tensor(model, tensor, name)
        graph.output.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shapes[name]))


def rename_input(model: onnx.ModelProto, name: str) -> None:
    """The graph's one input renamed to `name` wherever it is read."""
    rename_tensor(model, model.graph.input[0].name, name)


def rename_tensor(model: onnx.ModelProto, old: str, new: str) -> None:
    if old == new:
        return
    if new in {t for node in model.graph.node for t in (*node.input, *node.output)}:
        raise UserError(f"the model already has a tensor named {new!r}, a name the engines' outputs need")
    for node in model.graph.node:
        node.input[:] = [new if t == old else t for t in node.input]
        node.output[:] = [new if t == old else t for t in node.output]
    for info in (*model.graph.input, *model.graph.output, *model.graph.value_info):
        if info.name == old:
            info.name = new


def exit_segment(
    plain: onnx.ModelProto, head: nn.Module | None, temperature: float, num_classes: int, index: int, first: bool,
) -> onnx.ModelProto:
    """A plain segment made into an engine: (features, probs, entropy, maxprob) for an
    early exit with `head`, (probs, entropy, maxprob) for the final one (head None)."""
    model = onnx.ModelProto()
    model.CopyFrom(plain)
    end = model.graph.output[0].name
    if not first:
        rename_input(model, FEATURES_IN)
    prefix = f"exit{index}/"
    logits = end if head is None else append_head(model, end, head, prefix)
    scores = append_scores(model, logits, temperature, num_classes, prefix)
    shapes: dict[str, list[int | str]] = {PROBS: ["batch", num_classes], ENTROPY: ["batch"], MAXPROB: ["batch"]}
    if head is not None:
        feature_dims = [d.dim_value for d in plain.graph.output[0].type.tensor_type.shape.dim[1:]]
        shapes[FEATURES] = ["batch", *feature_dims]
        scores = {FEATURES: end, **scores}
    set_outputs(model, scores, shapes)
    return model


def static_engine(model: onnx.ModelProto, logits: str, num_classes: int) -> onnx.ModelProto:
    """The whole model with the static engine's outputs: probs and entropy at temperature 1."""
    static = onnx.ModelProto()
    static.CopyFrom(model)
    scores = append_scores(static, logits, 1.0, num_classes, "static/")
    set_outputs(static, {PROBS: scores[PROBS], ENTROPY: scores[ENTROPY]}, {PROBS: ["batch", num_classes], ENTROPY: ["batch"]})
    return static
