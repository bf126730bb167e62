"""Cut points of a backbone with the measured latency share of the part before each,
and split points proposed from those measurements (latency, never FLOPs: seed 002)."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from engines.backbone import BlockBackbone
from engines.export import export_module


@dataclass(frozen=True)
class CutPoint:
    index: int  # block index: a split point
    name: str
    aliases: list[str]
    shape: list[int]  # the features that cross, without the batch
    prefix_ms: float | None = None  # measured time of everything up to here, batch 1
    prefix_share: float | None = None  # ... as a share of the whole network's

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def cut_points(backbone: BlockBackbone) -> list[CutPoint]:
    """Every place an exit can go: after each block but the last (it feeds the classifier)."""
    aliases: dict[int, list[str]] = {}
    for name, index in [*backbone.stage_ends.items(), *backbone.aliases.items()]:
        aliases.setdefault(index, []).append(name)
    return [
        CutPoint(i.index, i.name, sorted(set(aliases.get(i.index, []))), list(i.shape))
        for i in backbone.feature_info()[:-1]
    ]


def measure_cut_points(backbone: BlockBackbone, rounds: int = 200, progress: bool = True) -> list[CutPoint]:
    """Cut points with the measured latency of each prefix: every block (with the stem
    first and the classifier last) exported to ONNX and timed alone in onnxruntime at
    batch 1 on its real input, the blocks interleaved round by round."""
    pieces = _pieces(backbone)
    with tempfile.TemporaryDirectory(prefix="edge-cuts-") as tmp:
        runs = _export_pieces(pieces, backbone.input_shape, Path(tmp), progress)
        block_ms = time_interleaved(runs, rounds, progress)
    total = float(sum(block_ms))
    prefix = np.cumsum(block_ms)
    return [
        CutPoint(c.index, c.name, c.aliases, c.shape, float(prefix[c.index]), float(prefix[c.index]) / total)
        for c in cut_points(backbone)
    ]


def propose_splits(points: Sequence[CutPoint], count: int) -> list[str]:
    """`count` split points whose prefixes are nearest to even shares of the measured
    latency (1/(count+1), 2/(count+1), ...), distinct and in order. Only block outputs
    are proposed (names no deeper than the median: `features.7`, not the
    `features.7.block.2` inside it)."""
    depth = float(np.median([p.name.count(".") for p in points])) if points else 0.0
    return propose_by_share([p for p in points if p.name.count(".") <= depth], count)


def propose_by_share(points: Sequence[CutPoint], count: int) -> list[str]:
    """`count` of `points` (in order) nearest to even shares of the measured latency."""
    timed = [p for p in points if p.prefix_share is not None]
    chosen: list[CutPoint] = []
    for k in range(1, count + 1):
        target = k / (count + 1)
        later = [p for p in timed if not chosen or p.index > chosen[-1].index]
        if not later:
            break
        chosen.append(min(later, key=lambda p: abs(p.prefix_share - target)))  # type: ignore[operator]
    return [p.name for p in chosen]


def _pieces(backbone: BlockBackbone) -> list[nn.Module]:
    blocks = list(backbone.blocks)
    return [nn.Sequential(backbone.stem, blocks[0]), *blocks[1:], backbone.head]


def _export_pieces(pieces: list[nn.Module], input_shape: Sequence[int], out_dir: Path, progress: bool) -> list[tuple[Any, str, np.ndarray]]:
    """(session, input name, real batch-1 input) per piece."""
    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend

    backend = OnnxRuntimeBackend()
    x = torch.rand(1, *input_shape)
    runs = []
    for k, piece in enumerate(tqdm(pieces, desc="export blocks", disable=not progress, leave=False)):
        graph = export_module(piece.eval(), x, out_dir / f"block_{k}.onnx", "x", ["y"])
        runs.append((backend.open_session(graph.path), "x", x.numpy()))
        with torch.no_grad():
            x = piece(x)
    return runs


def time_interleaved(runs: list[tuple[Any, str, np.ndarray]], rounds: int, progress: bool) -> list[float]:
    """Median ms per piece; each round runs every piece once, so drift hits all alike."""
    for session, name, x in runs:
        for _ in range(10):
            session.run(None, {name: x})
    times = np.empty((rounds, len(runs)))
    for r in tqdm(range(rounds), desc="time blocks", disable=not progress, leave=False):
        for k, (session, name, x) in enumerate(runs):
            start = time.perf_counter()
            session.run(None, {name: x})
            times[r, k] = (time.perf_counter() - start) * 1e3
    return np.median(times, axis=0).tolist()
