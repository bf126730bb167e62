"""edge-adaptive-report: every depth configuration of an adaptive-depth network measured, and
the Pareto frontier of depth configuration x exit thresholds (calibration.adaptive_report).

    edge-adaptive-report --checkpoint runs/adn/adaptive-exits.pt --static runs/adn/static.pt --out runs/adn/report
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.adaptive_report import THRESHOLDS, AdaptiveReportJob, adaptive_report, print_summary
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> AdaptiveReportJob:
    p = argparse.ArgumentParser(prog="edge-adaptive-report", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="adaptive-exits.pt from edge-train-adaptive")
    p.add_argument("--static", type=Path, help="the same network trained the normal way (static.pt), to compare with")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--test-samples", type=int, default=0, help="for the depth table; 0 = the whole test split")
    p.add_argument("--sweep-samples", type=int, default=3000, help="for the depth x threshold sweep")
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)), help="entropy thresholds (nats), comma-separated")
    a = p.parse_args(argv)
    thresholds = tuple(float(t) for t in a.thresholds.split(","))
    return AdaptiveReportJob(a.checkpoint, a.out, a.static, a.data, a.test_samples, a.sweep_samples, thresholds)


def main(argv: list[str] | None = None) -> int:
    job = parse_args(argv)
    report = adaptive_report(job)
    print_summary(report)
    print(f"wrote {job.out / 'adaptive.json'}, depths.png, pareto.png; engines and operating points in {job.out / 'engines'}")
    return 0


def cli() -> int:
    return run_main(main)
