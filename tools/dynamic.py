"""edge-dynamic: per-input depth (or width) measured against every fixed configuration of
an adaptive network (calibration.dynamic_depth): gates trained on measured costs, then
the runtime's accuracy and latency at batch 1 for each fixed configuration and each
per-input point.

    edge-dynamic --checkpoint runs/adn20/adaptive-exits.pt --out runs/dynamic --results docs/results/dynamic.json
    edge-dynamic --checkpoint runs/slim20/adaptive-exits.pt --out runs/dynamic-width --results docs/results/dynamic.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.dynamic_depth import DynamicDepthJob, dynamic_depth, print_summary
from tools._cli import run_main


def span(text: str) -> tuple[int, int]:
    start, sep, stop = text.partition(":")
    if not (sep and start.isdigit() and stop.isdigit() and int(start) < int(stop)):
        raise argparse.ArgumentTypeError(f"expected START:STOP with START < STOP, e.g. 30000:40000, got {text!r}")
    return int(start), int(stop)


def parse_args(argv: list[str] | None) -> DynamicDepthJob:
    p = argparse.ArgumentParser(prog="edge-dynamic", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="adaptive-exits.pt from edge-train-adaptive (adaptive depth, or --width)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--calibration", type=span, default=(30000, 40000), help="training images the network did not see, START:STOP (gates and their costs)")
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--budget", type=float, default=0.8, help="the gates' mean latency over the full depth's, on calibration images")
    p.add_argument("--same-accuracy", type=float, default=0.1, help="points: fixed depths this close in accuracy count as equal (noise)")
    p.add_argument("--results", type=Path, help="also write the report here under \"depth\" or \"width\" (the other kept) and the PNG beside it (docs/results/dynamic.json)")
    p.add_argument("--route-thresholds", default="0.2,0.35,0.5,0.65,0.8", help="skip a stage when its gate says >= this; comma-separated")
    a = p.parse_args(argv)
    thresholds = tuple(float(t) for t in a.route_thresholds.split(","))
    return DynamicDepthJob(a.checkpoint, a.out, a.data, a.calibration, test_samples=a.test_samples, budget=a.budget,
                           route_thresholds=thresholds, same_accuracy=a.same_accuracy / 100, results=a.results)


def main(argv: list[str] | None = None) -> int:
    job = parse_args(argv)
    report = dynamic_depth(job)
    print_summary(report)
    kind = report["variants"]
    print(f"wrote {job.out / f'dynamic-{kind}.json'} and dynamic-{kind}.png; engines in {job.out / 'engines'}")
    return 0


def cli() -> int:
    return run_main(main)
