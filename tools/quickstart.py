"""edge-quickstart: train a small multi-exit ResNet on Fashion-MNIST, build its engines, and
compare the early-exit chain with the static model on the test set, at batch 1
(calibration.quickstart).

    edge-quickstart            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.quickstart import Quickstart, quickstart
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> Quickstart:
    p = argparse.ArgumentParser(prog="edge-quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", help="dataset: fashion-mnist, digits, idx:DIR, folder:DIR")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--splits", default="layer1,layer2", help="comma-separated split points (block or stage names)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=30000, help="train on this many samples (0 = all 55k)")
    p.add_argument("--test-samples", type=int, default=0, help="evaluate on this many test samples (0 = all)")
    p.add_argument("--max-drop", type=float, default=0.005, help="accuracy drop allowed vs the final exit (0.005 = 0.5 points)")
    p.add_argument("--calibration-samples", type=int, default=5000)
    a = p.parse_args(argv)
    return Quickstart(**(vars(a) | {"splits": tuple(a.splits.split(","))}))


def main(argv: list[str] | None = None) -> int:
    quickstart(parse_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
