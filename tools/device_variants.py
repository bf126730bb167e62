"""device-variants: a copy of an engines folder with the FP16 and symmetric INT8 ONNX
variants TensorRT 11.x builds from, checked against fp32 on onnxruntime.

    edge-device-variants --engines runs/quickstart/engines --out runs/quickstart/device-engines
    edge-device-check --engines runs/quickstart/device-engines --build --precision int8   # on the device

Writes device_variants.json into --out: each exit's test accuracy at fp32, fp16 and int8
(onnxruntime on this machine) and the drop from fp32 in points.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from calibration.data import load_dataset
from calibration.int8 import engine_table, segment_inputs
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.runtime import Runtime
from engines.device_variants import FP16, INT8, device_engines
from tools._cli import run_main

PRECISIONS = ("fp32", FP16, INT8)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-device-variants", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True, help="a new folder for the device's engines")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--calibration", type=int, default=512, help="training images the int8 ranges come from")
    p.add_argument("--test", type=int, default=0, help="test images the accuracy is measured on (0: all)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    source = Runtime(args.engines, precisions=[])
    shape, classes = source.manifest.input.shape[1:], source.manifest.classes
    train = load_dataset(args.data, "train", shape, classes)
    test = load_dataset(args.data, "test", shape, classes)
    if args.test:
        test = test.subset(slice(0, args.test))
    images = np.ascontiguousarray(train.images[: args.calibration], dtype=np.float32)
    inputs = segment_inputs(source, images)
    source.close()
    manifest = device_engines(args.engines, args.out, inputs)
    runtime = Runtime(args.out, precisions=[FP16, INT8])
    accuracy = {p: exit_accuracies(runtime, test, p) for p in PRECISIONS}
    runtime.close()
    drops = {p: [round(100 * (f - a), 3) for f, a in zip(accuracy["fp32"], accuracy[p])] for p in (FP16, INT8)}
    report = {"engines": str(args.engines), "out": str(args.out), "data": test.name, "test_images": len(test),
              "calibration_images": len(images), "accuracy": accuracy, "drop_pt": drops,
              "files": {p: [s.variants[p]["file"] for s in manifest.segments] for p in (FP16, INT8)}}
    write_json_atomic(args.out / "device_variants.json", report)
    for k in range(manifest.num_exits):
        row = ", ".join(f"{p} {accuracy[p][k]:.2%}" for p in PRECISIONS)
        print(f"exit {k}: {row} (drop fp16 {drops[FP16][k]:+.2f} pt, int8 {drops[INT8][k]:+.2f} pt)")
    print(f"wrote {args.out} and {args.out / 'device_variants.json'}")
    return 0


def exit_accuracies(runtime: Runtime, data: object, precision: str) -> list[float]:
    table = engine_table(runtime, data, precision, ["entropy"])  # type: ignore[arg-type]
    return [float(a) for a in (table.predictions == table.labels).mean(axis=1)]


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
