"""Export each segment to its own ONNX file and check it against torch.

Every exported segment ends in its exit's softmax and its exit scores, so the runtime
reads a ready score and never computes a softmax in Python (per-exit Python cost
decides whether early exits pay off on a small network). Every score is "lower is more
confident": a sample leaves when its score <= the exit's threshold.
  entropy  softmax entropy in nats
  maxprob  1 - the largest probability
  gate     1 - a learned gate's exit probability (only where a gate was trained)
A segment whose output a depth gate reads (per-input depth, calibration.depth_gates)
also outputs `skip_next`: the gate's probability that the next stage may run its base
variant.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edge.atomic import atomic_path
from engines.partition import MultiExitNetwork, Segment

OPSET = 18  # what TensorRT 10.3 (JetPack 6.1) parses; the dynamo exporter's floor
# Without torchvision the exporter warns about each torchvision op it skips registering,
# four lines per export: none of them is ever in a segment.
EXPORTER_REGISTRY_LOGGER = "torch.onnx._internal.exporter._registration"


def _not_torchvision_skips(record: logging.LogRecord) -> bool:
    return not record.getMessage().startswith("torchvision is not installed")


logging.getLogger(EXPORTER_REGISTRY_LOGGER).addFilter(_not_torchvision_skips)
FEATURES, PROBS, ENTROPY, MAXPROB, GATE = "features", "probs", "entropy", "maxprob", "gate"
SKIP_NEXT = "skip_next"
CRITERIA = (ENTROPY, MAXPROB, GATE)


class ExitScores(nn.Module):
    """Logits -> (probabilities, entropy in nats, 1 - max probability), with a temperature."""

    temperature: torch.Tensor

    def __init__(self, temperature: float = 1.0) -> None:
        super().__init__()
        self.register_buffer("temperature", torch.tensor(float(temperature)))

    def forward(self, logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        log_probs = torch.log_softmax(logits / self.temperature, dim=1)
        probs = log_probs.exp()
        return probs, -(probs * log_probs).sum(dim=1), 1.0 - probs.amax(dim=1)


class ExportableSegment(nn.Module):
    """A segment as exported: (features, probs, entropy, maxprob[, gate][, skip_next]),
    without features when final. `gate` maps (features, probs) to the exit probability;
    `router` maps features to the probability that the next stage may skip."""

    def __init__(self, segment: Segment, temperature: float = 1.0, gate: nn.Module | None = None, router: nn.Module | None = None) -> None:
        super().__init__()
        if router is not None and segment.is_final:
            raise ValueError("the final segment has no next stage to route")
        self.segment = segment
        self.scores = ExitScores(temperature)
        self.gate = gate
        self.router = router

    def output_names(self) -> list[str]:
        names = [PROBS, ENTROPY, MAXPROB] + ([GATE] if self.gate is not None else []) + ([SKIP_NEXT] if self.router is not None else [])
        return names if self.segment.is_final else [FEATURES, *names]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features, logits = self.segment(x)
        outputs: tuple[torch.Tensor, ...] = self.scores(logits)
        if self.gate is not None:
            outputs += (1.0 - self.gate(features, outputs[0]),)
        if self.router is not None:
            outputs += (self.router(features),)
        return outputs if self.segment.is_final else (features, *outputs)


class ExportableStatic(nn.Module):
    """The monolithic backbone with the same scored outputs as a final segment."""

    def __init__(self, backbone: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.scores = ExitScores()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        probs, entropy, _ = self.scores(self.backbone(x))
        return probs, entropy


@dataclass(frozen=True)
class TensorSpec:
    name: str
    shape: list[int | str]  # "batch" marks the dynamic dimension
    dtype: str = "float32"

    def to_dict(self) -> dict[str, object]:
        return {"name": self.name, "shape": self.shape, "dtype": self.dtype}


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]


def export_module(module: nn.Module, example: torch.Tensor, path: Path, input_name: str, output_names: Sequence[str]) -> ExportedGraph:
    """One ONNX file with a dynamic batch dimension, weights embedded, written atomically."""
    module = module.eval()
    if example.shape[0] < 2:
        example = example.repeat(2, *[1] * (example.dim() - 1))  # the exporter specialises a batch of 1
    with torch.no_grad():
        outputs = module(example)
    batch = torch.export.Dim("batch", min=1, max=4096)
    with atomic_path(path) as tmp, torch.no_grad():
        torch.onnx.export(
            module, (example,), str(tmp), input_names=[input_name], output_names=list(output_names),
            dynamic_shapes=({0: batch},), opset_version=OPSET, dynamo=True,
            external_data=False, verbose=False,
        )
    return ExportedGraph(
        path=path,
        inputs=[_spec(input_name, example)],
        outputs=[_spec(n, t) for n, t in zip(output_names, outputs)],
    )


def _spec(name: str, tensor: torch.Tensor) -> TensorSpec:
    return TensorSpec(name, ["batch", *tensor.shape[1:]])


def segment_input_name(index: int) -> str:
    return "input" if index == 0 else "features_in"


def export_segments(
    net: MultiExitNetwork,
    out_dir: Path,
    example: torch.Tensor,
    temperatures: Sequence[float] | None = None,
    gates: Sequence[nn.Module] | None = None,
    suffix: str = "",
    only: Collection[int] | None = None,
    routers: Sequence[nn.Module | None] | None = None,
) -> list[ExportedGraph | None]:
    """segment_{k}{suffix}.onnx for every segment (or those in `only`; None for the
    rest), each fed by the previous one's features. `gates`, if given, has one gate
    per early exit; `routers` one depth gate or None per segment."""
    wrapped = exportable_segments(net, temperatures, gates, routers)
    exported: list[ExportedGraph | None] = []
    x = example
    for k, (segment, module) in enumerate(zip(net.segments, wrapped)):
        if only is None or k in only:
            path = out_dir / f"segment_{k}{suffix}.onnx"
            exported.append(export_module(module, x, path, segment_input_name(k), module.output_names()))
        else:
            exported.append(None)
        with torch.no_grad():
            x = segment(x)[0]
    return exported


def exportable_segments(
    net: MultiExitNetwork, temperatures: Sequence[float] | None = None, gates: Sequence[nn.Module] | None = None,
    routers: Sequence[nn.Module | None] | None = None,
) -> list[ExportableSegment]:
    net = net.eval()
    temperatures = list(temperatures) if temperatures is not None else [1.0] * net.num_exits
    if len(temperatures) != net.num_exits:
        raise ValueError(f"need {net.num_exits} temperatures (one per exit), got {len(temperatures)}")
    if gates is not None and len(gates) != net.num_exits - 1:
        raise ValueError(f"need {net.num_exits - 1} gates (one per early exit), got {len(gates)}")
    if routers is not None and len(routers) != net.num_exits:
        raise ValueError(f"need {net.num_exits} routers (a depth gate or None per segment), got {len(routers)}")
    gate_of = list(gates) + [None] if gates is not None else [None] * net.num_exits
    router_of = list(routers) if routers is not None else [None] * net.num_exits
    return [ExportableSegment(s, t, g, r) for s, t, g, r in zip(net.segment_list, temperatures, gate_of, router_of)]


def export_static(backbone: nn.Module, path: Path, example: torch.Tensor) -> ExportedGraph:
    return export_module(ExportableStatic(backbone), example, path, "input", [PROBS, ENTROPY])


def max_abs_diff_vs_torch(module: nn.Module, graph: ExportedGraph, inputs: Sequence[np.ndarray], relative: bool = False) -> float:
    """Largest |onnxruntime - torch| over every output and input batch; `relative`
    divides each output's by max(1, its largest |value|) (random weights at 224x224 make
    features of thousands, where float32 rounding alone passes 1e-4)."""
    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    session = OnnxRuntimeBackend().open_session(graph.path)
    module = module.eval()
    worst = 0.0
    for x in inputs:
        with torch.no_grad():
            expected = module(torch.from_numpy(x))
        got = session.run(None, {graph.inputs[0].name: x})
        for e, g in zip(expected, got):
            scale = max(1.0, float(np.max(np.abs(e.numpy())))) if relative else 1.0
            worst = max(worst, float(np.max(np.abs(e.numpy() - g))) / scale)
    return worst
