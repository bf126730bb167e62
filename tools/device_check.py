"""device-check: on a Jetson (or any NVIDIA GPU with TensorRT), build the plans, check them
against onnxruntime, profile them, read the sensors, write a report.

    edge-device-check --engines runs/quickstart/engines --build [--precision fp16] [--dla-core 0]

1. --build: a TensorRT plan per engine file of the manifest (engines/tensorrt_build.py),
   recorded in the manifest with this device's TensorRT version, GPU and compute
   capability.
2. Every segment, fed the same inputs (real images, then each segment's own features),
   on TensorRT and on onnxruntime (CPU): the largest difference of its exit's
   probabilities and score, against a tolerance (1e-3 at fp32, 5e-2 at fp16 and int8).
3. Latency of each segment at batch 1, on both backends.
4. One sensor reading (jtop, else sysfs).
Writes device_check.json next to the manifest and exits 1 if any segment is out of
tolerance. This is the acceptance test of the TensorRT path on real hardware.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

import numpy as np

from calibration.data import load_dataset
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.errors import UserError
from edge.manifest import load_manifest
from tools._cli import run_main

TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2, "int8": 5e-2}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-device-check", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--build", action="store_true", help="build (or rebuild) the TensorRT plans first")
    p.add_argument("--precision", default="fp32", choices=sorted(TOLERANCE))
    p.add_argument("--dla-core", type=int)
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--calls", type=int, default=200, help="timed calls per segment")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from edge.backends.tensorrt_device import device_identity
    from engines.tensorrt_build import TrtBuildOptions, build_tensorrt_engines

    manifest = load_manifest(args.engines)
    identity = device_identity()  # fails first, clearly, where there is no TensorRT or GPU
    if args.build:
        options = TrtBuildOptions(args.precision, args.workspace_mb, args.dla_core, args.engines / "timing.cache")
        manifest = build_tensorrt_engines(manifest, options)
    data = load_dataset(args.data, "test")
    images = np.ascontiguousarray(data.images[:8], dtype=np.float32)
    if images.shape[1:] != tuple(manifest.input.shape[1:]):
        raise UserError(f"{args.data} images are {images.shape[1:]}, the engines take {tuple(manifest.input.shape[1:])}")
    from edge.backends.tensorrt_backend import TensorRTBackend

    variant = "int8" if args.precision == "int8" else "fp16" if args.precision == "fp16" and all("fp16" in s.variants for s in manifest.segments) else "fp32"
    trt_backend, ort_backend = TensorRTBackend(plan_precision=args.precision), OnnxRuntimeBackend()
    trt_backend.load(manifest, variant)
    ort_backend.load(manifest, "int8" if variant == "int8" else "fp32")
    batch = check_batch(len(images), trt_backend.batch_range)
    segments = compare_segments(trt_backend, ort_backend, manifest.num_exits, images, TOLERANCE[args.precision], batch)
    timed = images[: trt_backend.batch_range[0]]  # batch 1 unless the plans take one larger size only (DLA)
    latency = {"tensorrt": time_segments(trt_backend, manifest.num_exits, timed, args.calls),
               "onnxruntime": time_segments(ort_backend, manifest.num_exits, timed, args.calls)}
    report = {
        "device": dict(zip(("tensorrt", "gpu", "compute_capability"), identity)), "precision": args.precision,
        "dla_core": args.dla_core, "batch": {"compared": batch, "timed": len(timed)}, "segments": segments, "latency_ms": latency, "sensors": read_sensors(),
        "passed": all(s["within_tolerance"] for s in segments),
    }
    write_json_atomic(args.engines / "device_check.json", report)
    for k, s in enumerate(segments):
        print(f"segment {k}: max |tensorrt - onnxruntime| {s['max_abs_diff']:.2e} ({'ok' if s['within_tolerance'] else 'OUT OF TOLERANCE'}); "
              f"{latency['tensorrt'][k]:.3f} ms vs {latency['onnxruntime'][k]:.3f} ms")
    print(f"wrote {args.engines / 'device_check.json'}")
    trt_backend.close()
    ort_backend.close()
    return 0 if report["passed"] else 1


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


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
