"""edge-bench: early exits on converged models against their static model, onnxruntime on
the CPU, batch 1 (calibration.bench).

    edge-bench --train-only     # train (checkpoints cached under --out)
    edge-bench                  # place exits, build, measure, write docs/results/bench*.json
    edge-bench --rules          # then: exit decision rules compared on the placed exits
    edge-bench --models resnet20 --depth-frontier --results docs/results/depth   # depth and exits on one frontier
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.bench import MODELS, BenchConfig, run_bench
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> BenchConfig:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--train-only", action="store_true", help="train and checkpoint, measure nothing")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="where bench.json, bench.png and bench-summary.json go")
    p.add_argument("--max-drop", type=float, default=0.5, help="accuracy target: points below the static model")
    p.add_argument("--margin", type=float, default=0.15, help="points kept in hand when choosing on the calibration split")
    p.add_argument("--criterion", default="entropy", choices=["entropy", "maxprob"])
    p.add_argument("--cost-samples", type=int, default=1000, help="calibration images timed for the candidate costs")
    p.add_argument("--rules", action="store_true",
                   help="compare exit decision rules on each model's placed exits (after edge-bench; writes bench-rules.json)")
    p.add_argument("--depth-frontier", action="store_true",
                   help="also an adaptive-depth version of the models that have one (resnet20): depth and exits on one frontier")
    a = p.parse_args(argv)
    return BenchConfig(**(vars(a) | {"models": a.models.split(",")}))


def main(argv: list[str] | None = None) -> int:
    run_bench(parse_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
