"""edge-bench-server: edged against the same runtime called in-process (calibration.bench.server).

    edge-bench-server --engines runs/quickstart/engines --out runs/bench-server
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.bench.server import ServerBench, bench_server
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-bench-server", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, default=Path("runs/bench-server"))
    p.add_argument("--requests", type=int, default=2000, help="per concurrency level")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument("--max-batch", type=int, default=16)
    a = p.parse_args(argv)
    concurrency = tuple(int(c) for c in a.concurrency.split(","))
    bench_server(ServerBench(a.engines, a.out, a.data, a.requests, concurrency, a.max_batch))
    return 0


def cli() -> int:
    return run_main(main)
