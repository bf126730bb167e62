"""edge-fuzz: property-based requests over HTTP JSON, binary tensors, gRPC and shared
memory against edged; every answer a 2xx or 4xx, the server alive and correct after
(edge.loadtest.fuzz).

    edge-fuzz --engines runs/quickstart/engines --requests 100000     # -> docs/results/fuzz.json
"""

from __future__ import annotations

import argparse
from pathlib import Path

from edge.errors import UserError
from edge.loadtest.fuzz import FuzzConfig, run_fuzz
from edge.manifest import MANIFEST_NAME
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-fuzz", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"), help="a manifest folder")
    p.add_argument("--requests", type=int, default=100_000, help="over all four channels")
    p.add_argument("--report", type=Path, default=Path("docs/results/fuzz.json"))
    a = p.parse_args(argv)
    if not (a.engines / MANIFEST_NAME).is_file():
        raise UserError(f"{a.engines} holds no {MANIFEST_NAME}: build engines first (edge-quickstart writes runs/quickstart/engines)")
    if a.requests < 4:
        raise UserError("--requests must be at least 4 (one per channel)")
    return 0 if run_fuzz(FuzzConfig(a.engines, a.requests, a.report))["passed"] else 1


def cli() -> int:
    return run_main(main)
