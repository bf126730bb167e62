"""Measure the real runtime and the static model on a dataset: accuracy, latency, exits.

Batch-1 latencies of several configurations are measured in interleaved blocks: the
images are cut into blocks, and every configuration runs over a block (one image after
another, as a device serves) before the next block, in a shuffled order per block.
Within a block a configuration finds the caches warm from its own previous image, as in
deployment; across blocks a slow spell of the machine (other tenants, frequency
changes) hits every configuration alike, so their ratios mean something. (Measured:
switching configuration after every image left each one with caches cold from another
and made the static model look up to 15% slower than when it runs on its own.)
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.data import Dataset
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.runtime import Runtime

# One batch-1 call: image -> (predicted class, exit taken, per-segment ms or None).
Config = Callable[[np.ndarray], tuple[int, int, Sequence[float] | None]]


@dataclass(frozen=True)
class Measurement:
    accuracy: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    exit_fractions: list[float]
    samples: int
    segment_ms: list[float] | None = None  # mean time of each segment where it ran

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def reach_fractions(self) -> list[float]:
        return [1.0 - sum(self.exit_fractions[:k]) for k in range(len(self.exit_fractions))]


def runtime_config(
    runtime: Runtime, thresholds: Sequence[float | None] | None = None, criterion: str | None = None, precision: str | None = None,
    depth: str | None = None, point_name: str | None = None, whole: bool = True,
) -> Config:
    def run(image: np.ndarray) -> tuple[int, int, Sequence[float]]:
        result = runtime.infer(image, thresholds, criterion, precision, depth, point_name, whole)
        return int(result.predictions[0]), int(result.exits[0]), result.segment_ms

    return run


def measure_interleaved(
    configs: dict[str, Config], data: Dataset, warmup: int = 50, progress: bool = True, seed: int = 0, block: int = 250,
) -> dict[str, Measurement]:
    """Batch 1, every configuration on every image, wall time around each call."""
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    names = list(configs)
    calls = [configs[n] for n in names]
    for i in range(min(warmup, len(images))):
        for call in calls:
            call(images[i : i + 1])
    n, c = len(images), len(calls)
    latencies = np.empty((c, n))
    predictions = np.empty((c, n), dtype=np.int64)
    exits = np.empty((c, n), dtype=np.int64)
    segment_sums: list[np.ndarray | None] = [None] * c
    segment_runs: list[np.ndarray | None] = [None] * c
    rng = np.random.default_rng(seed)
    bar = tqdm(total=n * c, desc=f"batch 1 x {c} configs", disable=not progress, leave=False)
    for first in range(0, n, block):
        for k in rng.permutation(c):
            for i in range(first, min(first + block, n)):
                start = time.perf_counter()
                predictions[k, i], exits[k, i], seg = calls[k](images[i : i + 1])
                latencies[k, i] = (time.perf_counter() - start) * 1e3
                if seg is not None:
                    ran = np.asarray(seg) > 0
                    segment_sums[k] = (0 if segment_sums[k] is None else segment_sums[k]) + np.asarray(seg)
                    segment_runs[k] = (0 if segment_runs[k] is None else segment_runs[k]) + ran
            bar.update(min(block, n - first))
    bar.close()
    results = {}
    for k, name in enumerate(names):
        seg_ms = None
        sums, runs = segment_sums[k], segment_runs[k]
        if sums is not None and runs is not None:
            seg_ms = (sums / np.maximum(runs, 1)).tolist()
        num_exits = len(seg_ms) if seg_ms is not None else 1
        results[name] = _summary(latencies[k], predictions[k] == data.labels, exits[k], num_exits, seg_ms)
    return results


def _summary(latencies_ms: np.ndarray, correct: np.ndarray, exits: np.ndarray, num_exits: int, segment_ms: list[float] | None) -> Measurement:
    fractions = np.bincount(exits, minlength=num_exits) / len(exits)
    return Measurement(
        accuracy=float(correct.mean()),
        mean_ms=float(latencies_ms.mean()),
        p50_ms=float(np.percentile(latencies_ms, 50)),
        p99_ms=float(np.percentile(latencies_ms, 99)),
        exit_fractions=fractions.tolist(),
        samples=len(correct),
        segment_ms=segment_ms,
    )


def measure_throughput(infer: Callable[[np.ndarray], Any], data: Dataset, batch_size: int = 64) -> float:
    """Samples per second at a fixed batch size over the whole dataset."""
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    infer(images[:batch_size])
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        infer(images[i : i + batch_size])
    return len(images) / (time.perf_counter() - start)


def segment_latencies(runtime: Runtime, data: Dataset, samples: int = 300, warmup: int = 30) -> list[float]:
    """Median batch-1 latency of each segment alone, fed with its real input: a quick
    cost estimate for choosing thresholds."""
    images = np.ascontiguousarray(data.images[:samples], dtype=np.float32)
    backend = runtime.backend
    medians = []
    inputs = [backend.upload(images[i : i + 1]) for i in range(len(images))]
    for k in range(runtime.num_exits):
        for x in inputs[:warmup]:
            backend.run(k, x)
        times, next_inputs = [], []
        for x in inputs:
            start = time.perf_counter()
            out = backend.run(k, x)
            times.append((time.perf_counter() - start) * 1e3)
            next_inputs.append(out.features)
        medians.append(float(np.median(times)))
        inputs = next_inputs
    return medians


class StaticModel:
    """The monolithic model in one onnxruntime session with the runtime's session options."""

    def __init__(self, path: Path, backend: OnnxRuntimeBackend | None = None) -> None:
        backend = backend or OnnxRuntimeBackend()
        self.session = backend.open_session(path)
        self._run = backend.runner(self.session)  # the same call path as the chain's segments
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self._run(["probs"], {self.input_name: images}, None)[0]

    def config(self) -> Config:
        return lambda image: (int(self.predict(image)[0].argmax()), 0, None)
