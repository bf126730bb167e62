"""The benchmark's report: its summary figures, its PNG and its printed table, from a
report of the bench's shape."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from calibration.bench.report import print_summary, summary_entry
from calibration.plots.bench import plot_bench, plot_depth_frontiers


def timed(accuracy: float, mean_ms: float, ratio: float, predicted: float, exits: list[float]) -> dict[str, Any]:
    return {"accuracy": accuracy, "mean_ms": mean_ms, "ratio": ratio, "predicted_ms": predicted, "exit_fractions": exits}


def model(chain_accuracy: float, chain_ms: float) -> dict[str, Any]:
    chain = {
        "point": timed(chain_accuracy, chain_ms, chain_ms, chain_ms * 1.05, [0.6, 0.4]),
        "full": timed(0.92, 1.1, 1.1, 1.1, [0.0, 1.0]), "chain_full_ratio": 1.2, "exits": ["layer1.1"], "oracle_ms": 0.4, "oracle_ratio": 0.4,
    }
    int8 = {"point": timed(0.915, 0.45, 0.9, 0.45, [0.6, 0.4]), "full": timed(0.92, 0.55, 1.1, 0.5, [0.0, 1.0]), "chain_full_ratio": 1.1, "exits": ["layer1.1"]}
    placement = {"chosen": ["layer1.1"], "predicted": {"chosen": {"predicted_ms": 0.5}, "fixed": {"predicted_ms": 0.7}}}
    return {
        "test_samples": 100, "static": {"accuracy": 0.92, "mean_ms": 1.0}, "static_int8": {"accuracy": 0.918, "mean_ms": 0.5},
        "max_drop": 0.005, "placements": {"joint": placement}, "sets": {"joint/chosen": chain, "int8-joint/chosen": int8},
    }


def test_the_summary_takes_the_fastest_point_within_the_target_static_included() -> None:
    paying = summary_entry("m", model(chain_accuracy=0.917, chain_ms=0.5))
    assert paying["best_fp32"]["point"] == "joint/chosen"
    assert paying["best_fp32"]["accuracy_drop_pt"] == pytest.approx(0.3)
    assert paying["best_fp32"]["ratio"] == 0.5 and paying["best_fp32"]["vs_own_oracle"] == pytest.approx(1.25)
    assert paying["best_int8"]["point"] == "int8-joint/chosen" and paying["best_int8"]["ratio_vs_static_int8"] == 0.9
    assert paying["full_depth_ratio"] == 1.1 and paying["oracle_ratio"] == 0.4
    assert paying["worst_predicted_error"] == pytest.approx(0.1)  # int8 at full depth: 0.55 measured, 0.5 predicted
    # exits that lose more accuracy than the target allows, or time: the static engine is the answer
    assert summary_entry("m", model(chain_accuracy=0.90, chain_ms=0.5))["best_fp32"]["point"] == "static"
    slow = summary_entry("m", model(chain_accuracy=0.92, chain_ms=1.2))
    assert slow["best_fp32"] == {"point": "static", "accuracy_drop_pt": 0.0, "ratio": 1.0}


def test_plot_writes_a_png(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "bench.png"
    plot_bench({"models": {"tiny": model(0.917, 0.5)}}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size > 10_000


def test_the_printed_table_gives_ratios_and_the_placement(capsys: pytest.CaptureFixture[str]) -> None:
    print_summary({"models": {"tiny": model(0.917, 0.5)}})
    out = capsys.readouterr().out
    assert "== tiny: static 92.00%, 1.000 ms" in out
    assert "joint: exits placed at layer1.1; predicted 0.500 ms against 0.700 ms at layer1, layer2" in out
    assert "joint/chosen: 91.70% 0.500 ms (0.50x, predicted 0.525)  full depth 1.100x (chain 1.200x), oracle 0.40x  exits 60%, 40%" in out


def depth_report() -> dict[str, Any]:
    def point(name: str, accuracy: float, ratio: float) -> dict[str, Any]:
        return {"name": name, "accuracy": accuracy, "ratio": ratio, "predicted_ratio": ratio * 1.02,
                "accuracy_drop_pt": 100 * (0.92 - accuracy), "exit_fractions": [0.5, 0.5]}

    return {"static": {"accuracy": 0.92, "mean_ms": 1.0},
            "points": [point("FF-off", 0.921, 1.03), point("TT-off", 0.912, 0.7), point("FF-exits", 0.918, 0.8)],
            "frontier": ["TT-off", "FF-exits", "static", "FF-off"], "best": {"point": "FF-exits", "accuracy_drop_pt": 0.2, "ratio": 0.8}}


def test_the_depth_frontier_is_summarised_printed_and_drawn(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = {"max_drop_pt": 0.5, "models": {"tiny": model(0.917, 0.5) | {"depth_and_exits": depth_report()}}}
    assert summary_entry("tiny", report["models"]["tiny"])["depth_and_exits"] == {"point": "FF-exits", "accuracy_drop_pt": 0.2, "ratio": 0.8}
    assert "depth_and_exits" not in summary_entry("m", model(0.917, 0.5))
    print_summary(report)
    out = capsys.readouterr().out
    assert "*   FF-exits: 91.80% (-0.20 pt) 0.80x (predicted 0.82x)" in out
    assert "best within the target: FF-exits 0.80x, -0.20 pt" in out
    path = tmp_path / "depth.png"
    assert plot_depth_frontiers(report, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not plot_depth_frontiers({"max_drop_pt": 0.5, "models": {"m": model(0.917, 0.5)}}, tmp_path / "none.png")
    assert not (tmp_path / "none.png").exists()  # no adaptive-depth model: no picture
