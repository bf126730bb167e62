"""What `edge-intake` prints about a network: its cut points with the measured latency
share of each prefix, the proposed split points, whether adaptive depth applies, and a
check of a chosen cut (the chained segments against the network)."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edge.errors import UserError
from engines.backbone import BlockBackbone
from engines.intake.check import TOLERANCE, check_chain
from engines.intake.cuts import CutPoint
from engines.intake.sources import Source, build_backbone, traced_network


def cut_table(points: list[CutPoint]) -> str:
    rows = [f"{'#':>3}  {'cut point':<36} {'features':<18} {'prefix ms':>9} {'share':>6}  also"]
    for p in points:
        rows.append(f"{p.index:>3}  {p.name:<36} {'x'.join(map(str, p.shape)):<18} {p.prefix_ms:>9.3f} {p.prefix_share:>6.1%}  {', '.join(p.aliases)}")
    return "\n".join(rows)


def depth_line(depth: dict[str, Any]) -> str:
    if "refused" in depth:
        return f"no: {depth['refused']}"
    stages = ", ".join(f"{name} (skips {n})" for name, n in zip(depth["stages"], depth["skippable"]))
    return f"stages {stages}; edge-train-adaptive trains it"


def intake_network(source: str, num_classes: int, input_shape: tuple[int, int, int], kwargs: dict[str, Any], weights: Path | None) -> tuple[nn.Module | None, BlockBackbone]:
    """The traced network and its backbone; a zoo network is its own backbone."""
    if Source.parse(source).traced:
        return traced_network(source, num_classes, input_shape, kwargs, weights)
    return None, build_backbone(source, num_classes, input_shape, kwargs, weights)


def resolved_splits(backbone: BlockBackbone, splits: list[str]) -> list[str]:
    """The split points, each checked to be a clean cut before anything is timed."""
    try:
        for point in splits:
            backbone.resolve_split(point)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return splits


def check_cut(network: nn.Module | None, backbone: BlockBackbone, splits: list[str], input_shape: tuple[int, int, int]) -> None:
    """The chain cut at `splits` against the network, on random images; prints the verdict."""
    images = np.random.default_rng(0).random((4, *input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edge-intake-") as tmp:
        if network is None:
            result = check_chain(backbone, backbone, splits, Path(tmp), images, normalized=False)
        else:
            result = check_chain(network, backbone, splits, Path(tmp), images)
    verdict = "equal" if result.ok else "DIFFERENT"
    print(f"chain at {','.join(splits)}: {verdict} to the network (max |diff| / max(1, |logit|): torch {result.torch_diff:.2g}, "
          f"onnxruntime {result.onnx_diff:.2g}, worst segment {max(result.segment_diffs):.2g}; tolerance {TOLERANCE:g})")
    if not result.ok:
        raise UserError("the exported chain does not reproduce the network")
