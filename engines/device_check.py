"""The device check: on a Jetson (or any NVIDIA GPU with TensorRT), build the plans, check
them against onnxruntime, profile them, read the sensors (`edge-device-check`).

1. With `build`: a TensorRT plan per engine file of the manifest (engines/tensorrt_build.py),
   recorded in the manifest with this device's TensorRT version, GPU and compute
   capability.
2. Every segment, fed the same inputs (real images, then each segment's own features),
   on TensorRT and on onnxruntime (CPU): the largest difference of its exit's
   probabilities and score, against a tolerance (1e-3 at fp32, 5e-2 at fp16 and int8).
3. Latency of each segment at batch 1, on both backends.
4. One sensor reading (jtop, else sysfs).
The report goes to device_check.json next to the manifest. This is the acceptance test
of the TensorRT path on real hardware. TensorRT is imported only here, when it runs.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.errors import UserError
from edge.manifest import load_manifest

TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-2}


@dataclass(frozen=True)
class DeviceCheck:
    engines: Path  # the manifest folder
    build: bool = False  # build (or rebuild) the TensorRT plans first
    precision: str = "fp32"
    dla_core: int | None = None
    workspace_mb: int = 1024
    calls: int = 200  # timed calls per segment


def run_device_check(check: DeviceCheck, images: np.ndarray, source: str = "the images") -> dict[str, Any]:
    """Compare and time every segment on TensorRT against onnxruntime with `images` (a
    few real ones), read the sensors, write device_check.json; the report's `passed`
    says whether every segment is within tolerance."""
    from edge.backends.tensorrt_device import device_identity
    from engines.tensorrt_build import TrtBuildOptions, build_tensorrt_engines

    manifest = load_manifest(check.engines)
    identity = device_identity()  # fails first, clearly, where there is no TensorRT or GPU
    if check.build:
        options = TrtBuildOptions(check.precision, check.workspace_mb, check.dla_core, check.engines / "timing.cache")
        manifest = build_tensorrt_engines(manifest, options)
    images = np.ascontiguousarray(images, dtype=np.float32)
    if images.shape[1:] != tuple(manifest.input.shape[1:]):
        raise UserError(f"{source} are {images.shape[1:]}, the engines take {tuple(manifest.input.shape[1:])}")
    from edge.backends.tensorrt_backend import TensorRTBackend

    fp16 = check.precision == "fp16" and all("fp16" in s.variants for s in manifest.segments)
    variant = "int8" if check.precision == "int8" else "fp16" if fp16 else "fp32"
    trt_backend, ort_backend = TensorRTBackend(plan_precision=check.precision), OnnxRuntimeBackend()
    try:
        trt_backend.load(manifest, variant)
        ort_backend.load(manifest, "int8" if variant == "int8" else "fp32")
        batch = check_batch(len(images), trt_backend.batch_range)
        segments = compare_segments(trt_backend, ort_backend, manifest.num_exits, images, TOLERANCE[check.precision], batch)
        timed = images[: trt_backend.batch_range[0]]  # batch 1 unless the plans take one larger size only (DLA)
        latency = {"tensorrt": time_segments(trt_backend, manifest.num_exits, timed, check.calls),
                   "onnxruntime": time_segments(ort_backend, manifest.num_exits, timed, check.calls)}
    finally:
        trt_backend.close()
        ort_backend.close()
    report = {
        "device": dict(zip(("tensorrt", "gpu", "compute_capability"), identity)), "precision": check.precision,
        "dla_core": check.dla_core, "batch": {"compared": batch, "timed": len(timed)}, "segments": segments, "latency_ms": latency,
        "sensors": read_sensors(), "passed": all(s["within_tolerance"] for s in segments),
    }
    write_json_atomic(check.engines / "device_check.json", report)
    return report


def check_batch(images: int, batch_range: tuple[int, int]) -> int:
    """The batch the comparison feeds: as many of the images as the plans take at once,
    and a size they take (a DLA plan takes one); the images are fed in such chunks."""
    low, high = batch_range
    if images < low:
        raise UserError(f"the plans take batches of {low} to {high}; only {images} images to compare")
    return min(images, high)


def compare_segments(
    trt: Any, ort: OnnxRuntimeBackend, num_segments: int, images: np.ndarray, tolerance: float, batch: int,
) -> list[dict[str, Any]]:
    """Each segment fed identical host inputs on both backends (so errors do not compound),
    `batch` rows per call; rows past the last whole batch are left out."""
    usable = len(images) - len(images) % batch
    results, inputs = [], images[:usable]
    for k in range(num_segments):
        diffs, features = [0.0], []
        for start in range(0, usable, batch):
            chunk = np.ascontiguousarray(inputs[start : start + batch])
            expected = ort.run(k, chunk)
            got = trt.run(k, trt.upload(chunk))
            diffs += [float(np.max(np.abs(expected.probs - got.probs))), float(np.max(np.abs(expected.scores - got.scores)))]
            if expected.features is not None:
                features.append(expected.features)
        results.append({"max_abs_diff": max(diffs), "within_tolerance": max(diffs) <= tolerance})
        if features:
            inputs = np.ascontiguousarray(np.concatenate(features))
    return results


def time_segments(backend: Any, num_segments: int, image: np.ndarray, calls: int) -> list[float]:
    means = []
    features = backend.upload(image)
    for k in range(num_segments):
        out = backend.run(k, features)
        start = time.perf_counter()
        for _ in range(calls):
            backend.run(k, features)
        means.append((time.perf_counter() - start) / calls * 1e3)
        features = out.features
    return means


def read_sensors() -> dict[str, Any]:
    from edge.sensors import SensorError, open_first
    from edge.sensors.jtop_source import JtopSource
    from edge.sensors.sysfs import SysfsSource

    try:
        source, skipped = open_first([JtopSource, SysfsSource])
        reading = source.read()
        source.close()
    except SensorError as exc:
        return {"error": str(exc)}
    return {"source": reading.source, "temperatures": reading.temperatures, "power_mw": reading.power_mw,
            "rails_mw": reading.rails_mw, "nvpmodel": reading.nvpmodel, "skipped": skipped}
