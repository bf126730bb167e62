"""edge-bench-onboard: per-request overhead over the in-process runtime for clients on the
same board: HTTP JSON, HTTP binary, gRPC and system shared memory (calibration.bench.onboard).

    edge-bench-onboard                      # both sizes, concurrency 1 and 8 -> docs/results/onboard.json
    edge-bench-onboard --sizes 1x28x28 --requests 100
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.bench.onboard import MODELS, OnboardBench, bench_onboard
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-bench-onboard", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=OnboardBench.out, help="where the random-weight engines are built (cached)")
    p.add_argument("--report", type=Path, default=OnboardBench.report)
    p.add_argument("--sizes", default=",".join(OnboardBench.sizes), help=f"input sizes among {', '.join(MODELS)}")
    p.add_argument("--concurrency", default=",".join(map(str, OnboardBench.concurrency)))
    p.add_argument("--requests", type=int, default=OnboardBench.requests, help="per protocol and concurrency, over all rounds")
    p.add_argument("--rounds", type=int, default=OnboardBench.rounds)
    a = p.parse_args(argv)
    sizes = tuple(a.sizes.split(","))
    unknown = [s for s in sizes if s not in MODELS]
    if unknown:
        p.error(f"unknown sizes {unknown}; known: {list(MODELS)}")
    bench_onboard(OnboardBench(a.out, a.report, sizes, tuple(int(c) for c in a.concurrency.split(",")), a.requests, a.rounds))
    return 0


def cli() -> int:
    return run_main(main)
