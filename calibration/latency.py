"""Profile a runtime's engines on the machine it runs on, and predict operating points.

Latency, not FLOPs (seed 002): every figure here is wall time measured through the real
runtime at batch 1 (and the other batch sizes asked for). The latency model predicts a
point's mean latency as

    overhead + sum over segments of P(reach segment k) x cost_k

where cost_k is the segment's mean time with its exit computed, or as a trunk when the
point switches that exit off, and overhead is what one call costs outside the segments.
A point with every exit off runs the whole engine where the manifest has one: its
measured call time.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from tqdm import tqdm

from edge.runtime import Runtime

NONE_PASS = -1.0  # below every score (all are >= 0): each exit is computed, none is taken


@dataclass(frozen=True)
class Timing:
    mean_ms: float
    median_ms: float
    p99_ms: float

    @classmethod
    def of(cls, samples_ms: np.ndarray) -> Timing:
        return cls(float(np.mean(samples_ms)), float(np.median(samples_ms)), float(np.percentile(samples_ms, 99)))


@dataclass(frozen=True)
class LatencyModel:
    """Per-segment costs at one batch size; predicts a point's mean latency per call."""

    segment_ms: list[float]  # exit computed
    trunk_ms: list[float]  # exit off (non-final segments only)
    overhead_ms: float
    whole_ms: float | None = None  # one call of the whole engine (every exit off), if it runs one

    def predict(self, reach: Sequence[float], thresholds: Sequence[float | None]) -> float:
        if self.whole_ms is not None and all(t is None for t in thresholds):
            return self.whole_ms
        total = self.overhead_ms
        for k, fraction in enumerate(reach):
            off = k < len(thresholds) and thresholds[k] is None
            total += fraction * (self.trunk_ms[k] if off else self.segment_ms[k])
        return total

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LatencyModel:
        whole = data.get("whole_ms")
        return cls(list(data["segment_ms"]), list(data["trunk_ms"]), float(data["overhead_ms"]), None if whole is None else float(whole))


@dataclass(frozen=True)
class BatchProfile:
    batch: int
    segments: list[Timing]  # exit computed
    trunks: list[Timing]  # exit off
    call: Timing  # one whole call with every exit computed and none taken
    model: LatencyModel

    def to_dict(self) -> dict[str, Any]:
        return {
            "batch": self.batch, "segments": [asdict(t) for t in self.segments],
            "trunks": [asdict(t) for t in self.trunks], "call": asdict(self.call), "model": self.model.to_dict(),
        }


def profile_runtime(
    runtime: Runtime, images: np.ndarray, batch_sizes: Sequence[int] = (1,), calls: int = 400, warmup: int = 50,
    criterion: str | None = None, progress: bool = True, precision: str | None = None,
) -> dict[int, BatchProfile]:
    """Time every segment, with its exit and as a trunk, through the real runtime."""
    images = np.ascontiguousarray(images, dtype=np.float32)
    early = runtime.num_exits - 1
    profiles = {}
    for batch in batch_sizes:
        if batch > len(images):
            raise ValueError(f"batch {batch} needs at least {batch} images, got {len(images)}")
        starts = np.arange(calls) * batch % (len(images) - batch + 1)
        evaluated = _time_calls(runtime, images, starts, batch, [NONE_PASS] * early, criterion, precision, warmup, progress)
        trunks = _time_calls(runtime, images, starts, batch, [None] * early, criterion, precision, warmup, progress, whole=False)
        whole = None
        if runtime.has_whole and precision in (None, "fp32"):
            whole = float(np.mean(_time_calls(runtime, images, starts, batch, [None] * early, criterion, precision, warmup, progress)[0]))
        walls, segments = evaluated
        overhead = float(np.mean(walls - segments.sum(axis=1)))
        segment_timings = [Timing.of(segments[:, k]) for k in range(runtime.num_exits)]
        trunk_timings = [Timing.of(trunks[1][:, k]) for k in range(early)]
        model = LatencyModel([t.mean_ms for t in segment_timings], [t.mean_ms for t in trunk_timings], overhead, whole)
        profiles[batch] = BatchProfile(batch, segment_timings, trunk_timings, Timing.of(walls), model)
    return profiles


def _time_calls(
    runtime: Runtime, images: np.ndarray, starts: np.ndarray, batch: int, thresholds: list[float | None],
    criterion: str | None, precision: str | None, warmup: int, progress: bool, whole: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Wall time of each call and its per-segment times, in ms."""
    for s in starts[:warmup]:
        runtime.infer(images[s : s + batch], thresholds, criterion, precision, whole=whole)
    walls = np.empty(len(starts))
    segments = np.empty((len(starts), runtime.num_exits))
    label = "exits computed" if thresholds and thresholds[0] is not None else "exits off"
    for i, s in enumerate(tqdm(starts, desc=f"profile batch {batch}, {label}", disable=not progress, leave=False)):
        t0 = time.perf_counter()
        result = runtime.infer(images[s : s + batch], thresholds, criterion, precision, whole=whole)
        walls[i] = (time.perf_counter() - t0) * 1e3
        segments[i] = result.segment_ms
    return walls, segments
