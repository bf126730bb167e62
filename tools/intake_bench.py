"""edge-intake-bench: every listed architecture traced, cut, checked and timed -> intake.json
(calibration.intake).

    edge-intake-bench --out docs/results/intake.json             # the whole list (about an hour on 2 cores)
    edge-intake-bench --out /tmp/intake.json --only resnet18,vit  # a subset
    edge-intake-bench --out docs/results/intake.json --resume     # go on after an interruption
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.intake import run_intake_bench
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-intake-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/results/intake.json"))
    p.add_argument("--only", default="", help="comma-separated substrings of the sources to run")
    p.add_argument("--images", type=int, default=300, help="batch-1 calls per configuration")
    p.add_argument("--resume", action="store_true", help="keep the entries --out already holds and run the rest")
    p.add_argument("--plot", type=Path, default=None, help="the chain-over-static bar chart (default: --out with .png)")
    a = p.parse_args(argv)
    run_intake_bench(a.out, a.only.split(","), a.images, a.resume, a.plot)
    return 0


def cli() -> int:
    return run_main(main)
