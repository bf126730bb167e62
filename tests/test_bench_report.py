"""The benchmark's report: its PNG and its printed table, from a report of the bench's shape."""

from __future__ import annotations

from pathlib import Path

import pytest

from tools.bench import print_summary
from tools.bench_plot import plot_bench


def point(accuracy: float, mean_ms: float, threshold: float | None, exits: list[float]) -> dict[str, object]:
    return {
        "accuracy": accuracy, "mean_ms": mean_ms, "p50_ms": mean_ms, "p99_ms": 2 * mean_ms, "exit_fractions": exits,
        "samples": 100, "segment_ms": [0.1, 0.1, 0.1], "threshold": threshold,
        "predicted_mean_ms": mean_ms * 1.02, "throughput_b64": 1000.0,
    }


def report() -> dict[str, object]:
    variant = {
        "segment_ms": [0.1, 0.1, 0.1],
        "full_depth": point(0.9, 0.33, None, [0.0, 0.0, 1.0]),
        "exits_evaluated": point(0.9, 0.36, -1.0, [0.0, 0.0, 1.0]),
        "sweep": [point(0.9, 0.3, 0.1, [0.1, 0.1, 0.8]), point(0.85, 0.2, 0.5, [0.5, 0.2, 0.3])],
        "calibrated": point(0.89, 0.25, 0.3, [0.3, 0.2, 0.5]),
        "oracle_mean_ms": 0.15,
        "exit_accuracy": [0.7, 0.8, 0.9],
    }
    static = {"accuracy": 0.9, "mean_ms": 0.32, "p50_ms": 0.31, "p99_ms": 0.5, "throughput_b64": 3000.0}
    return {"dataset": "digits", "test_samples": 100, "models": {"tiny": {"static": static, "variants": {"joint": variant}}}}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bench.png"
    plot_bench(report(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_summary_prints_ratios_against_static(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary(report())
    out = capsys.readouterr().out
    assert "== tiny: static 90.00% 0.320 ms/img" in out
    assert "(0.78x)" in out  # calibrated 0.25 ms / static 0.32 ms
    assert "calibrated H<=0.3" in out and "oracle 0.150 ms" in out
    assert "full depth, exits off acc 90.00%  mean 0.330 ms (1.03x)" in out
    assert "exits computed, none taken acc 90.00%  mean 0.360 ms (1.12x)" in out
