"""edge-device-check: on a Jetson (or any NVIDIA GPU with TensorRT), build the plans, check
them against onnxruntime, profile them, read the sensors, write a report (engines.device_check).

    edge-device-check --engines runs/quickstart/engines --build [--precision fp16] [--dla-core 0]

Exits 1 if any segment is out of tolerance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.data import load_dataset
from engines.device_check import TOLERANCE, DeviceCheck, run_device_check
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> tuple[DeviceCheck, str]:
    p = argparse.ArgumentParser(prog="edge-device-check", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--build", action="store_true", help="build (or rebuild) the TensorRT plans first")
    p.add_argument("--precision", default="fp32", choices=sorted(TOLERANCE))
    p.add_argument("--dla-core", type=int)
    p.add_argument("--workspace-mb", type=int, default=1024)
    p.add_argument("--calls", type=int, default=200, help="timed calls per segment")
    a = p.parse_args(argv)
    return DeviceCheck(a.engines, a.build, a.precision, a.dla_core, a.workspace_mb, a.calls), a.data


def main(argv: list[str] | None = None) -> int:
    check, data = parse_args(argv)
    report = run_device_check(check, load_dataset(data, "test").images[:8], f"{data} images")
    latency = report["latency_ms"]
    for k, s in enumerate(report["segments"]):
        print(f"segment {k}: max |tensorrt - onnxruntime| {s['max_abs_diff']:.2e} ({'ok' if s['within_tolerance'] else 'OUT OF TOLERANCE'}); "
              f"{latency['tensorrt'][k]:.3f} ms vs {latency['onnxruntime'][k]:.3f} ms")
    print(f"wrote {check.engines / 'device_check.json'}")
    return 0 if report["passed"] else 1


def cli() -> int:
    return run_main(main)
