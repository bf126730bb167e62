"""INT8 variants of a manifest's engines, and per-exit tables read from the engines.

The INT8 engines are calibrated on the inputs each segment really sees (the fp32
chain's features on calibration images). Which activation type runs faster differs
between CPUs, so both are built and timed through the runtime, and the faster kept.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np

from calibration.data import Dataset
from calibration.exits import ExitTable
from calibration.latency import profile_runtime
from edge.atomic import sha256_file
from edge.manifest import Manifest
from edge.runtime import Runtime
from engines.quantize import ACTIVATION_TYPES, QuantJob, quantize_segments

log = logging.getLogger(__name__)
PRECISION = "int8"


def segment_inputs(runtime: Runtime, images: np.ndarray) -> list[np.ndarray]:
    """Each segment's input on `images`: the images, then each fp32 segment's features."""
    inputs = [np.ascontiguousarray(images, dtype=np.float32)]
    for k in range(runtime.num_exits - 1):
        inputs.append(np.ascontiguousarray(runtime.backend.advance(k, inputs[-1])))
    return inputs


def with_int8(manifest: Manifest, inputs: list[np.ndarray], activation: str) -> Manifest:
    """Quantize every segment; the manifest gains an int8 variant per segment (not saved)."""
    jobs = [
        QuantJob(manifest.path_of(s.file), manifest.root / f"{Path(s.file).stem}.int8-{activation}.onnx", s.input.name, x, activation)
        for s, x in zip(manifest.segments, inputs)
    ]
    quantize_segments(jobs)
    segments = [
        dataclasses.replace(s, variants={**s.variants, PRECISION: {"file": job.target.name, "sha256": sha256_file(job.target)}})
        for s, job in zip(manifest.segments, jobs)
    ]
    return dataclasses.replace(manifest, segments=segments)


def fastest_int8(manifest: Manifest, runtime: Runtime, images: np.ndarray, calls: int = 300) -> tuple[Manifest, dict[str, float]]:
    """The manifest with the faster activation type's INT8 engines, and each type's mean
    batch-1 latency with every exit computed."""
    inputs = segment_inputs(runtime, images)
    built, timings = {}, {}
    for activation in ACTIVATION_TYPES:
        built[activation] = with_int8(manifest, inputs, activation)
        profile = profile_runtime(Runtime(built[activation]), images, (1,), calls, precision=PRECISION, progress=False)
        timings[activation] = profile[1].call.mean_ms
        log.info("int8 with %s activations: %.3f ms per call", activation, timings[activation])
    best = min(timings, key=timings.__getitem__)
    for activation in ACTIVATION_TYPES:
        if activation != best:
            for s in built[activation].segments:
                manifest.path_of(s.variants[PRECISION]["file"]).unlink(missing_ok=True)
    return built[best], timings


def engine_table(runtime: Runtime, data: Dataset, precision: str, criteria: list[str], batch_size: int = 64) -> ExitTable:
    """Every exit's predictions and scores as the engines of `precision` compute them."""
    backend = runtime.backend_for(precision)
    num_exits = runtime.num_exits
    preds: list[list[np.ndarray]] = [[] for _ in range(num_exits)]
    scores: dict[str, list[list[np.ndarray]]] = {c: [[] for _ in range(num_exits)] for c in criteria}
    for start in range(0, len(data), batch_size):
        features = backend.upload(np.ascontiguousarray(data.images[start : start + batch_size], dtype=np.float32))
        for k in range(num_exits):
            out = None
            for criterion in criteria:
                out = backend.run(k, features, criterion)
                scores[criterion][k].append(out.scores.astype(np.float64))
            assert out is not None
            preds[k].append(out.probs.argmax(axis=1))
            features = out.features
    stacked = {c: np.stack([np.concatenate(v) for v in per_exit]) for c, per_exit in scores.items()}
    entropies = stacked.pop("entropy")
    return ExitTable(np.stack([np.concatenate(p) for p in preds]), entropies, data.labels, stacked)
