"""edge-soak: edged under mixed-protocol load for --minutes with faults in turn; every
answer checked, memory followed (edge.loadtest.soak).

    edge-soak --engines runs/quickstart/engines --minutes 60      # -> docs/results/soak.json
    edge-soak --engines runs/quickstart/engines --minutes 1 --report /tmp/soak.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import UserError
from edge.loadtest.soak import SoakConfig, run_soak
from edge.manifest import MANIFEST_NAME
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-soak", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"), help="a manifest folder")
    p.add_argument("--minutes", type=float, default=60.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--report", type=Path, default=Path("docs/results/soak.json"))
    p.add_argument("--rss-every", type=float, default=600.0, help="seconds between memory samples")
    p.add_argument("--fault-every", type=float, default=300.0, help="seconds between fault cycles (sensor, engine, flood)")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds of load before the first fault cycle, after which memory is first read (at most a sixth of the run)")
    a = p.parse_args(argv)
    if not (a.engines / MANIFEST_NAME).is_file():
        raise UserError(f"{a.engines} holds no {MANIFEST_NAME}: build engines first (edge-quickstart writes runs/quickstart/engines)")
    if a.minutes <= 0 or a.concurrency < 1:
        raise UserError("--minutes must be positive and --concurrency at least 1")
    report = run_soak(SoakConfig(a.engines, a.minutes, a.concurrency, a.report, a.rss_every, a.fault_every, a.warmup))
    return 0 if report["passed"] else 1


def cli() -> int:
    return run_main(main)
