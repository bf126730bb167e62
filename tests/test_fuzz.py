"""edge-fuzz at CI size: a few thousand generated requests over the four channels (HTTP
JSON, binary tensors, gRPC, shared memory); every answer a 2xx or 4xx, edged alive and
correct after. docs/results/fuzz.json holds the 100,000-request run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools import fuzz

pytest.importorskip("hypothesis", reason="hypothesis (the 'test' extra) is not installed")
pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the 'test' extra) is not installed")
pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm: POSIX shared memory is Linux's here")


def test_generated_requests_get_only_2xx_or_4xx_and_the_server_stays_correct(built_dir: Path, tmp_path: Path) -> None:
    report_path = tmp_path / "fuzz.json"
    code = fuzz.main(["--engines", str(built_dir), "--requests", "4000", "--report", str(report_path)])
    report = json.loads(report_path.read_text())
    assert code == 0 and report["server_errors"] == 0, report["failure_samples"]
    assert report["requests"] == 4000 and report["alive_after"] and report["correct_after"] and report["edged_exit_code"] == 0
    statuses = report["per_channel"]
    assert all(sum(s.values()) == 1000 for s in statuses.values())
    # the generators reach past the parsers: some of every channel's requests are answered
    assert all(s.get("200", 0) + s.get("OK", 0) > 0 for s in statuses.values()), statuses
