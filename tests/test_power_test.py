"""The thermal and battery test scripts: the policy checker, the throttling model, end to end on digits."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from calibration import powertest
from calibration.powertest import ThrottleModel, check_policy
from edge.governor import Governor, Policy
from tools import power_test
from tools._cli import run_main

LAST, SAVER = 3, 2


def timeline(*rows: dict[str, Any]) -> list[dict[str, Any]]:
    base = {"temperature_c": 50.0, "soft_c": 80.0, "hard_c": 92.0, "battery_percent": None, "charging": None,
            "power_mw": None, "sensor_ok": True, "level": 0, "switched": False, "forced": False}
    return [base | {"time": float(t)} | row for t, row in enumerate(rows)]


def test_a_timeline_that_keeps_the_policy_has_no_violations() -> None:
    rows = timeline({}, {"temperature_c": 85.0, "level": 1, "switched": True, "forced": True},
                    {"temperature_c": 93.0, "level": 3, "switched": True, "forced": True}, {"temperature_c": 60.0, "level": 3})
    assert check_policy(rows, Policy(), LAST, SAVER) == []


@pytest.mark.parametrize("rows, message", [
    (({"temperature_c": 93.0, "level": 2},), "at or above the hard limit"),
    (({"temperature_c": 85.0}, {"temperature_c": 85.0}), "over the soft limit and no reaction within a tick"),
    (({}, {"temperature_c": 85.0}, {"temperature_c": 85.0, "level": 1, "switched": True, "forced": True}), ""),  # reacted within a tick
    (({"battery_percent": 9.0, "charging": False, "level": 2}, {"battery_percent": 9.0, "charging": False, "level": 2}), "battery 9%"),
    (({"battery_percent": 15.0, "charging": False, "level": 1}, {"battery_percent": 15.0, "charging": False, "level": 1}), "saver point"),
    (({"battery_percent": 5.0, "charging": True},), ""),  # charging: no battery rule
    (({"sensor_ok": False}, {"sensor_ok": False}), "sensor lost or stale"),
    (({}, {"level": 1}, {"level": 0}), "switch 1 s after the last one"),  # relaxing within the dwell
    (({}, {"level": 1, "forced": True}, {"level": 2, "forced": True}), "with no limit forcing it"),  # a flag does not excuse it
    (({}, {"temperature_c": 85.0, "level": 1}, {"temperature_c": 90.0, "level": 2}), ""),  # the heat does
    (({"power_mw": 6000.0, "level": 1}, {"power_mw": 6000.0, "level": 1}), "over budget"),
])
def test_each_broken_rule_is_caught(rows: tuple[dict[str, Any], ...], message: str) -> None:
    violations = check_policy(timeline(*rows), Policy(power_budget_mw=5000.0), LAST, SAVER)
    if message:
        assert any(message in v for v in violations), violations
    else:
        assert violations == []


def test_the_throttling_model_slows_between_the_limits_and_in_low_power_modes() -> None:
    model = ThrottleModel(min_speed=0.5)
    assert model.speed(70.0, 80.0, 90.0, "15W") == 1.0
    assert model.speed(85.0, 80.0, 90.0, "15W") == pytest.approx(0.75)
    assert model.speed(99.0, 80.0, 90.0, None) == pytest.approx(0.5)
    assert model.speed(None, 80.0, 90.0, "7W") == pytest.approx(0.5)
    assert "EMULATED" in model.describe()


@pytest.mark.parametrize("scenario", ["thermal", "battery"])
def test_the_scripts_run_the_shipped_traces_and_keep_the_policy(
    scenario: str, built_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    args = ["--engines", str(built_dir), "--data", "digits", "--out", str(tmp_path), "--images-per-tick", "2", "--profile-samples", "60"]
    assert run_main(lambda argv: power_test.main(argv, scenario), args) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["violations"] == [] and summary["scenario"] == scenario
    assert "EMULATED" in summary["emulation"] and "static" in summary
    assert summary["requests"] == 2 * summary["ticks"] and summary["switches"] > 0
    with (tmp_path / "timeline.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == summary["ticks"]
    assert {"time", "temperature_c", "point", "latency_ms", "static_latency_ms", "misses", "correct"} <= set(rows[0])
    conservative = summary["ladder"][-1]["point"]
    if scenario == "thermal":
        assert any(r["point"] == conservative for r in rows if float(r["temperature_c"]) >= float(r["hard_c"]))
    else:
        assert all(r["point"] == conservative for r in rows if float(r["battery_percent"]) < 10.0)
    assert (tmp_path / "plot.png").stat().st_size > 0
    assert "policy kept: no violations" in capsys.readouterr().out


def test_a_missing_engine_folder_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(lambda argv: power_test.main(argv, "thermal"), ["--engines", str(tmp_path / "none"), "--data", "digits"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "manifest not found" in err and "\n" not in err


def test_the_checker_settles_crossed_limits_as_the_governor_does() -> None:
    """A hard limit under the board's passive trip point: soft falls a hysteresis below
    hard on both sides, so the emulated slowdown never turns into a speed-up."""
    from edge.governor import Governor, Rung
    from edge.sensors.base import Reading

    policy = Policy(hard_limit_c=75.0)
    reading = Reading(0.0, "test", {"tj": 74.0}, {"tj": {"passive": 80.0, "hot": 90.0}})
    _, soft, hard = powertest.board_state(reading, policy)
    assert (soft, hard) == Governor([Rung("full", 1.0)], policy).limits(reading) == (72.0, 75.0)
    assert ThrottleModel().speed(85.0, soft, hard, None) == pytest.approx(0.5)


class GovernorIgnoringItsLimits(Governor):
    """A governor that never leaves its most accurate point: what the checker is for."""

    def tick(self, now: float, reading: Any, latency_ms: float | None = None, error: str | None = None) -> Any:
        decision = super().tick(now, reading, latency_ms, error)
        self.level = 0
        return dataclasses.replace(decision, level=0, point=self.rungs[0].point, switched=False, forced=False)


def test_a_run_that_breaks_the_policy_says_so_and_exits_3(
    built_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(powertest, "Governor", GovernorIgnoringItsLimits)
    args = ["--engines", str(built_dir), "--data", "digits", "--out", str(tmp_path), "--images-per-tick", "1", "--profile-samples", "30"]
    assert run_main(lambda argv: power_test.main(argv, "thermal"), args) == power_test.POLICY_BROKEN == 3
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert any("at or above the hard limit" in v for v in summary["violations"])
    assert "POLICY BROKEN" in capsys.readouterr().out
