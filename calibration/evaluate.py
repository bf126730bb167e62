"""Measure the real runtime and the static model on a dataset: accuracy, latency, exits."""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from calibration.data import Dataset
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.runtime import Runtime


@dataclass(frozen=True)
class Measurement:
    accuracy: float
    mean_ms: float
    p50_ms: float
    p99_ms: float
    exit_fractions: list[float]
    samples: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _summary(latencies_ms: np.ndarray, correct: np.ndarray, exits: np.ndarray, num_exits: int) -> Measurement:
    fractions = np.bincount(exits, minlength=num_exits) / len(exits)
    return Measurement(
        accuracy=float(correct.mean()),
        mean_ms=float(latencies_ms.mean()),
        p50_ms=float(np.percentile(latencies_ms, 50)),
        p99_ms=float(np.percentile(latencies_ms, 99)),
        exit_fractions=fractions.tolist(),
        samples=len(correct),
    )


def measure_runtime(
    runtime: Runtime,
    data: Dataset,
    thresholds: Sequence[float | None] | None = None,
    warmup: int = 50,
    progress: bool = True,
    label: str = "chain",
) -> Measurement:
    """Batch 1, one sample after another, wall time around each `infer` call."""
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    for i in range(min(warmup, len(images))):
        runtime.infer(images[i : i + 1], thresholds)
    latencies = np.empty(len(images))
    predictions = np.empty(len(images), dtype=np.int64)
    exits = np.empty(len(images), dtype=np.int64)
    for i in tqdm(range(len(images)), desc=label, disable=not progress, leave=False):
        start = time.perf_counter()
        result = runtime.infer(images[i : i + 1], thresholds)
        latencies[i] = (time.perf_counter() - start) * 1e3
        predictions[i] = result.predictions[0]
        exits[i] = result.exits[0]
    return _summary(latencies, predictions == data.labels, exits, runtime.num_exits)


def measure_throughput(runtime: Runtime, data: Dataset, batch_size: int = 64, thresholds: Sequence[float | None] | None = None) -> float:
    """Samples per second at a fixed batch size over the whole dataset."""
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    runtime.infer(images[:batch_size], thresholds)
    start = time.perf_counter()
    for i in range(0, len(images), batch_size):
        runtime.infer(images[i : i + batch_size], thresholds)
    return len(images) / (time.perf_counter() - start)


def segment_latencies(runtime: Runtime, data: Dataset, samples: int = 300, warmup: int = 30) -> list[float]:
    """Median batch-1 latency of each segment alone, fed with its real input."""
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
        self.session = (backend or OnnxRuntimeBackend()).open_session(path)
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(["probs"], {self.input_name: images})[0]

    def measure(self, data: Dataset, warmup: int = 50, progress: bool = True) -> Measurement:
        images = np.ascontiguousarray(data.images, dtype=np.float32)
        for i in range(min(warmup, len(images))):
            self.predict(images[i : i + 1])
        latencies = np.empty(len(images))
        predictions = np.empty(len(images), dtype=np.int64)
        for i in tqdm(range(len(images)), desc="static", disable=not progress, leave=False):
            start = time.perf_counter()
            probs = self.predict(images[i : i + 1])
            latencies[i] = (time.perf_counter() - start) * 1e3
            predictions[i] = probs[0].argmax()
        return _summary(latencies, predictions == data.labels, np.zeros(len(images), dtype=np.int64), 1)

    def throughput(self, data: Dataset, batch_size: int = 64) -> float:
        images = np.ascontiguousarray(data.images, dtype=np.float32)
        self.predict(images[:batch_size])
        start = time.perf_counter()
        for i in range(0, len(images), batch_size):
            self.predict(images[i : i + batch_size])
        return len(images) / (time.perf_counter() - start)
