"""Check a cut: the segments, run in order, must be the original network, in torch and
in onnxruntime. Differences are divided by max(1, largest |logit|): random weights can
make logits large, and a relative figure compares across networks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from engines.backbone import BlockBackbone, Normalize
from engines.export import ExportedGraph, export_module, segment_input_name
from engines.partition import MultiExitNetwork

TOLERANCE = 1e-4


@dataclass(frozen=True)
class ChainCheck:
    torch_diff: float  # chained torch segments against the original network
    onnx_diff: float  # chained onnxruntime segments against the original network
    segment_diffs: list[float]  # each exported segment against torch, on the same input
    graphs: list[ExportedGraph]

    @property
    def ok(self) -> bool:
        return max(self.torch_diff, self.onnx_diff, *self.segment_diffs) <= TOLERANCE


def chain_bodies(backbone: BlockBackbone, split_points: Sequence[int | str]) -> list[nn.Module]:
    """The plain segments (no exit heads): features in, features out, logits last."""
    return [segment.body for segment in MultiExitNetwork(backbone, split_points, num_classes=1).segment_list]


def check_chain(
    network: nn.Module, backbone: BlockBackbone, split_points: Sequence[int | str], out_dir: Path, images: np.ndarray,
    normalized: bool = True,
) -> ChainCheck:
    """Export every segment to `out_dir/chain_{k}.onnx` and compare the chains with
    `network` (the user's network: it takes normalized images, as traced) on `images`
    in [0, 1]. A zoo backbone is its own reference: pass it with `normalized=False`."""
    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32))
    norm = backbone.normalization
    reference = nn.Sequential(Normalize(norm["mean"], norm["std"]), network) if normalized else network
    with torch.no_grad():
        expected = reference.eval()(x).numpy()
    scale = max(1.0, float(np.abs(expected).max()))
    backend = OnnxRuntimeBackend()
    features, onnx_features = x, x.numpy()
    graphs, segment_diffs = [], []
    for k, body in enumerate(chain_bodies(backbone, split_points)):
        graph = export_module(body.eval(), features, Path(out_dir) / f"chain_{k}.onnx", segment_input_name(k), ["features"])
        session = backend.open_session(graph.path)
        name = graph.inputs[0].name
        alone = session.run(None, {name: features.numpy()})[0]  # fed by torch: this segment's own error
        onnx_features = session.run(None, {name: onnx_features})[0]  # fed by onnxruntime: the chain's
        with torch.no_grad():
            features = body(features)
        reference = features.numpy()
        segment_diffs.append(float(np.abs(alone - reference).max()) / max(1.0, float(np.abs(reference).max())))
        graphs.append(graph)
    return ChainCheck(
        torch_diff=float(np.abs(features.numpy() - expected).max()) / scale,
        onnx_diff=float(np.abs(onnx_features - expected).max()) / scale,
        segment_diffs=segment_diffs,
        graphs=graphs,
    )
