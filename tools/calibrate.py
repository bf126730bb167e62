"""edge-calibrate: calibrate a trained multi-exit checkpoint for this device (temperatures,
learned gates, thresholds, measured operating points; calibration.points).

    edge-calibrate --checkpoint runs/quickstart/multi_exit.pt --static runs/quickstart/static.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.points import CalibrationJob, calibrate, print_summary
from edge.manifest import MANIFEST_NAME
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> CalibrationJob:
    p = argparse.ArgumentParser(prog="edge-calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="multi-exit checkpoint (edge-train, edge-quickstart)")
    p.add_argument("--static", type=Path, help="the static model's checkpoint, for static.onnx and the reference accuracy")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, idx:DIR, folder:DIR")
    p.add_argument("--out", type=Path, default=Path("runs/calibrate"))
    p.add_argument("--calibration-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--budget-ms", type=float, help="also find the most accurate point within this mean batch-1 latency")
    p.add_argument("--gate-drop", type=float, default=0.5, help="accuracy drop (points) the gates are trained for, when no budget is given")
    p.add_argument("--profile-calls", type=int, default=400)
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 engines")
    return CalibrationJob(**vars(p.parse_args(argv)))


def main(argv: list[str] | None = None) -> int:
    job = parse_args(argv)
    report = calibrate(job)
    print_summary(report)
    print(f"wrote {job.out / 'engines' / MANIFEST_NAME}, {job.out / 'calibration.json'} and {job.out / 'pareto.png'}")
    return 0


def cli() -> int:
    return run_main(main)
