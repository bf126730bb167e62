"""The governor on scripted readings (the layer above the sensors), and its runtime switching."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.errors import ManifestError
from edge.governor import Governor, Policy, PolicyError, Rung, ladder, load_policy
from edge.manifest import load_manifest
from edge.runtime import Runtime
from edge.sensors import Reading

TRIPS = {"tj": {"passive": 80.0, "hot": 92.0}}
RUNGS = [Rung("accurate", 4.0, 0.92), Rung("careful", 3.0, 0.91), Rung("balanced", 2.0, 0.90), Rung("saver", 1.5, 0.88), Rung("eco", 1.0, 0.85)]


def reading(t: float, temp: float = 50.0, **kw: object) -> Reading:
    return Reading(t, "script", {"tj": temp}, TRIPS, **kw)  # type: ignore[arg-type]


def governor(**policy: object) -> tuple[Governor, list[str]]:
    applied: list[str] = []
    return Governor(RUNGS, Policy(**policy), applied.append), applied  # type: ignore[arg-type]


# --- ladder and policy -------------------------------------------------------------------------------

def test_ladder_orders_by_measured_cost_and_drops_dominated_points(built_dir: Path) -> None:
    manifest = load_manifest(built_dir)
    measured = {"full": {"mean_ms": 3.0, "accuracy": 0.9}, "eager": {"mean_ms": 1.0, "accuracy": 0.8}, "late": {"mean_ms": 3.5, "accuracy": 0.85}}
    assert [r.point for r in ladder(manifest, measured)] == ["full", "eager"]  # late: slower and worse than full
    assert [r.point for r in ladder(manifest, measured, ["late", "eager"])] == ["late", "eager"]
    with pytest.raises(ManifestError, match="'full' has no measured latency"):
        ladder(manifest)


def test_policy_files_are_checked(tmp_path: Path) -> None:
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"soft_limit_c": 70, "hard_limit_c": 85, "zones": ["tj"], "min_dwell_s": 2}))
    policy = load_policy(path)
    assert policy.soft_limit_c == 70 and policy.zones == ("tj",) and policy.min_dwell_s == 2
    for text, message in [
        ({"soft_limt_c": 70}, "unknown policy keys"),
        ({"soft_limit_c": 90, "hard_limit_c": 85}, "must be below"),
        ({"min_dwell_s": "5"}, "must be a number"),
        ({"min_dwell_s": True}, "must be a number"),
        ({"zones": "tj"}, "must be a list of names"),
    ]:
        path.write_text(json.dumps(text))
        with pytest.raises(PolicyError, match=message):
            load_policy(path)
    path.write_text("{oops")
    with pytest.raises(PolicyError, match="not valid JSON"):
        load_policy(path)
    shipped = Path(__file__).resolve().parents[1] / "policies/default.json"
    assert load_policy(shipped) == Policy()


def test_limits_come_from_the_policy_else_trip_points_else_defaults() -> None:
    g, _ = governor()
    assert g.limits(reading(0)) == (80.0, 92.0)
    assert g.limits(Reading(0, "x", {"cpu": 50.0})) == (80.0, 95.0)
    g, _ = governor(soft_limit_c=70.0)
    assert g.limits(reading(0)) == (70.0, 92.0)


# --- thermal -------------------------------------------------------------------------------------------

def test_heat_moves_down_at_once_and_cooling_moves_up_one_level_per_dwell() -> None:
    g, applied = governor(min_dwell_s=5.0, hysteresis_c=3.0)
    assert applied == ["accurate"]
    assert g.tick(0, reading(0, 60.0)).level == 0
    crossing = g.tick(1, reading(1, 81.0))
    assert crossing.switched and crossing.forced and crossing.level >= 1 and "81.0 C" in crossing.reason
    hot = g.tick(2, reading(2, 92.5))  # one second later: a forced move is never held back by the dwell
    assert hot.level == 4 and hot.forced and applied[-1] == "eco"
    assert g.tick(3, reading(3, 79.0)).level == 4  # below soft but within the hysteresis: stays
    levels = [g.tick(t, reading(t, 60.0)).level for t in range(4, 30)]
    assert levels[0] == 4  # the dwell since the last switch (t=2) is not over at t=4... (t - 2 = 2 s)
    ups = [t for t, (a, b) in enumerate(zip([4] + levels, levels), 4) if b < a]
    assert all(later - earlier >= 5 for earlier, later in zip(ups, ups[1:]))
    assert levels[-1] == 0 and all(a - b <= 1 for a, b in zip([4] + levels, levels))


def test_between_the_limits_the_level_rises_with_the_temperature() -> None:
    g, _ = governor()
    levels = [g.tick(t, reading(t, temp)).level for t, temp in enumerate([79.0, 80.0, 84.0, 88.0, 91.9, 92.0])]
    # levels 1..3 spread evenly over 80..92 C: a third of the range each
    assert levels == [0, 1, 2, 3, 3, 4]


def test_cooling_within_the_hysteresis_holds_the_level_past_the_dwell() -> None:
    g, _ = governor(min_dwell_s=5.0, hysteresis_c=3.0)
    assert g.tick(0, reading(0, 81.0)).level == 1
    # 79 C is below the soft limit but not by the 3 C hysteresis: no move up, however long
    assert [g.tick(t, reading(t, 79.0)).level for t in range(10, 40, 5)] == [1] * 6
    assert g.tick(45, reading(45, 76.9)).level == 0  # 3.1 C below: up


def test_only_the_zones_named_in_the_policy_count() -> None:
    g, _ = governor(zones=("cpu",))
    assert g.tick(0, Reading(0, "x", {"cpu": 50.0, "gpu": 99.0}, TRIPS)).level == 0
    lost = g.tick(1, Reading(1, "x", {"gpu": 50.0}, TRIPS))
    assert lost.level == 4 and "zones" in lost.reason


# --- battery, power, latency ---------------------------------------------------------------------------

def test_battery_thresholds_and_charging() -> None:
    g, _ = governor()
    assert g.tick(0, reading(0, battery_percent=50.0, charging=False)).level == 0
    saver = g.tick(1, reading(1, battery_percent=19.0, charging=False))
    assert saver.level == g.saver_level == 2 and "battery 19%" in saver.reason
    assert g.tick(2, reading(2, battery_percent=9.5, charging=False)).level == 4
    # plugged in: the battery asks for nothing, and the governor climbs back one level per dwell
    assert g.tick(10, reading(10, battery_percent=9.6, charging=True)).level == 3


def test_power_over_budget_steps_down_each_tick_and_near_it_holds() -> None:
    g, _ = governor(power_budget_mw=5000.0, power_margin=0.1, min_dwell_s=0.0)
    assert [g.tick(t, reading(t, power_mw=6000.0)).level for t in range(3)] == [1, 2, 3]
    assert g.tick(3, reading(3, power_mw=4800.0)).level == 3  # under budget, within the margin: hold
    assert g.tick(4, reading(4, power_mw=4000.0)).level == 2  # well under: relax one level


def test_latency_over_the_objective_steps_down_and_relaxes_only_when_the_next_point_fits() -> None:
    g, _ = governor(latency_objective_ms=2.5, min_dwell_s=0.0)
    assert g.tick(0, reading(0), latency_ms=3.9).level == 1
    assert g.tick(1, reading(1), latency_ms=2.9).level == 2
    assert g.tick(2, reading(2), latency_ms=2.0).level == 2  # careful would take 2.0 x 3/2 = 3.0 ms: hold
    g.level = 3
    assert g.tick(3, reading(3), latency_ms=1.5).level == 2  # balanced: 1.5 x 2/1.5 = 2.0 ms fits


def test_latency_feedback_waits_for_the_dwell_so_it_cannot_oscillate() -> None:
    g, _ = governor(latency_objective_ms=2.5, min_dwell_s=5.0)
    assert g.tick(0, reading(0), latency_ms=3.9).level == 1  # the first switch: nothing to wait for
    held = g.tick(1, reading(1), latency_ms=3.0)
    assert held.level == 1 and "dwell" in held.reason
    assert g.tick(6, reading(6), latency_ms=3.0).level == 2
    # relaxing needs the next point predicted under the objective less its margin: 1.7 x 3/2 = 2.55 > 2.25
    assert g.tick(20, reading(20), latency_ms=1.7).level == 2


# --- lost and stale sensors --------------------------------------------------------------------------

def test_a_lost_a_stale_or_a_vanished_reading_goes_to_the_most_conservative_point() -> None:
    g, _ = governor(stale_after_s=3.0, min_dwell_s=0.0)
    lost = g.tick(0, None, error="sysfs: thermal_zone1 vanished")
    assert lost.level == 4 and lost.forced and not lost.sensor_ok and "sensor lost: sysfs: thermal_zone1 vanished" in lost.reason
    g, _ = governor(stale_after_s=3.0)
    assert g.tick(9, reading(8.0)).sensor_ok
    stale = g.tick(10, reading(6.5))
    assert stale.level == 4 and "stale" in stale.reason
    g, _ = governor()
    g.tick(0, reading(0, battery_percent=80.0, charging=False))
    gone = g.tick(1, reading(1))  # the battery was there and is not any more
    assert gone.level == 4 and "lacks battery" in gone.reason
    g, _ = governor(power_budget_mw=5000.0)
    assert "lacks power" in g.tick(0, reading(0)).reason


def test_decisions_are_kept_as_state() -> None:
    g, _ = governor()
    for t, temp in enumerate([50.0, 85.0, 93.0]):
        g.tick(t, reading(t, temp))
    state = g.state()
    assert state["point"] == "eco" and state["level"] == 4 and [r["point"] for r in state["ladder"]] == [r.point for r in RUNGS]
    assert [d["switched"] for d in state["decisions"]] == [False, True, True]
    assert state["decisions"][-1]["temperature_c"] == 93.0


# --- runtime integration -------------------------------------------------------------------------------

def test_switching_under_load_never_splits_a_request(built_dir: Path, real_images: np.ndarray) -> None:
    """Requests on two threads while the governor flips between a point where every sample
    leaves at the first exit and one where none does: each batch is wholly one or the other."""
    runtime = Runtime(built_dir)
    g = Governor([Rung("full", 2.0), Rung("eager", 1.0)], Policy(min_dwell_s=0.0, hysteresis_c=0.0), runtime.set_operating_point)
    results: list[tuple[str, np.ndarray]] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            r = runtime.infer(real_images[:16])
            results.append((r.operating_point, r.exits.copy()))

    workers = [threading.Thread(target=serve) for _ in range(2)]
    for w in workers:
        w.start()
    for t in range(200):
        g.tick(t, reading(t, 93.0 if t % 2 else 50.0))
        time.sleep(0.002)  # let the workers run between switches
    stop.set()
    for w in workers:
        w.join()
    runtime.close()
    assert {name for name, _ in results} == {"full", "eager"}
    for name, exits in results:
        assert (exits == (0 if name == "eager" else 2)).all()


def test_a_manifest_with_measured_points_gives_the_governor_its_ladder(built_copy: Path) -> None:
    from edge.manifest import save_manifest

    manifest = load_manifest(built_copy)
    points = [dataclasses.replace(p, measured={"mean_ms": cost, "accuracy": acc})
              for p, (cost, acc) in zip(manifest.operating_points, [(3.0, 0.9), (1.0, 0.8), (2.0, 0.85)])]
    save_manifest(dataclasses.replace(manifest, operating_points=points), built_copy / "manifest.json")
    assert [r.point for r in ladder(load_manifest(built_copy))] == ["full", "late", "eager"]


# --- what each decision says, and the edges of every rule ------------------------------------------

def test_a_decision_records_the_reading_the_feedback_and_why() -> None:
    g, applied = governor(min_dwell_s=5.0)
    d = g.tick(10.0, reading(10.0, 50.0, power_mw=5000.0, battery_percent=80.0, charging=True), latency_ms=1.5)
    assert (d.time, d.point, d.level, d.switched, d.forced, d.sensor_ok) == (10.0, "accurate", 0, False, False, True)
    assert (d.temperature_c, d.power_mw, d.battery_percent, d.latency_ms) == (50.0, 5000.0, 80.0, 1.5)
    assert d.reason == "holding: within every limit" and applied == ["accurate"]
    lost = g.tick(11.0, None)
    assert lost.reason == "sensor lost: no reading" and lost.temperature_c is None and lost.forced
    again = g.tick(12.0, None)  # already at the last level: a limit, but no switch
    assert again.level == 4 and not again.switched and not again.forced
    both = governor(min_dwell_s=5.0)[0].tick(0, reading(0, 93.0, battery_percent=5.0, charging=False))
    assert both.reason == "down: 93.0 C (soft 80, hard 92); battery 5% discharging"


def test_limits_read_the_counted_zones_trip_points_and_settle_when_they_cross() -> None:
    trips = {"tj": {"passive": 85.0, "critical": 100.0}, "cpu": {"passive": 70.0, "hot": 90.0}}
    at = Reading(0, "x", {"tj": 50.0, "cpu": 50.0}, trips)
    assert governor(zones=("tj",))[0].limits(at) == (85.0, 100.0)
    assert governor()[0].limits(at) == (70.0, 90.0)
    assert governor(hard_limit_c=95.0)[0].limits(at) == (70.0, 95.0)
    crossed = Reading(0, "x", {"tj": 50.0}, {"tj": {"passive": 96.0, "hot": 92.0}})
    assert governor(hysteresis_c=3.0)[0].limits(crossed) == (89.0, 92.0)  # soft a hysteresis under hard
    assert governor(hysteresis_c=0.5)[0].limits(crossed) == (91.0, 92.0)  # at least one degree
    equal = Reading(0, "x", {"tj": 50.0}, {"tj": {"passive": 92.0, "hot": 92.0}})
    assert governor(hysteresis_c=3.0)[0].limits(equal) == (89.0, 92.0)


def test_policy_checks_name_the_field_at_their_exact_edges(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"^soft_limit_c \(90.0\) must be below hard_limit_c \(90.0\)$"):
        Policy(soft_limit_c=90.0, hard_limit_c=90.0)
    assert Policy(battery_lowest_pct=15.0, battery_saver_pct=15.0).battery_lowest_pct == 15.0
    with pytest.raises(PolicyError, match=r"^battery_lowest_pct must not be above battery_saver_pct$"):
        Policy(battery_lowest_pct=16.0, battery_saver_pct=15.0)
    with pytest.raises(PolicyError, match=r"^min_dwell_s must not be negative$"):
        Policy(min_dwell_s=-1.0)
    with pytest.raises(PolicyError, match=r"cannot read the policy \(No such file or directory\)$"):
        load_policy(tmp_path / "missing.json")
    (tmp_path / "list.json").write_text("[]")
    with pytest.raises(PolicyError, match=r"list.json: a policy is a JSON object$"):
        load_policy(tmp_path / "list.json")
    with pytest.raises(ManifestError, match=r"^the governor needs at least one operating point$"):
        Governor([], Policy())


def test_the_decision_history_is_bounded_and_the_state_shows_the_last_twenty() -> None:
    g = Governor(RUNGS, Policy(), history=3)
    for t in range(5):
        g.tick(t, reading(t))
    assert [d.time for d in g.decisions] == [2, 3, 4]
    g, _ = governor()
    for t in range(1001):
        g.tick(t, reading(t))
    assert len(g.decisions) == 1000
    state = g.state()
    assert len(state["decisions"]) == 20 and state["decisions"][-1]["time"] == 1000
    assert state["policy"]["min_dwell_s"] == 5.0 and state["ladder"][0]["point"] == "accurate"


def test_a_reading_is_stale_only_past_the_limit_and_a_field_once_seen_stays_required() -> None:
    g, _ = governor(stale_after_s=3.0)
    assert g.tick(10.0, reading(7.0)).sensor_ok  # exactly 3 s old: still fresh
    g, _ = governor(min_dwell_s=0.0)
    assert g.tick(0, reading(0, power_mw=5000.0)).sensor_ok
    for t in (1, 2):  # power is not in the policy, but it was there: gone is a problem, tick after tick
        gone = g.tick(t, reading(t))
        assert not gone.sensor_ok and gone.reason == "reading lacks power"
    fresh, _ = governor()
    assert fresh.tick(0, Reading(0, "x", {}, TRIPS)).reason == "reading lacks temperature"
    seen, _ = governor()
    seen.tick(0, reading(0, power_mw=1.0, battery_percent=50.0, charging=True))
    assert seen.tick(1, Reading(1, "x", {"tj": 50.0}, TRIPS)).reason == "reading lacks battery, power"


def test_the_thermal_levels_at_the_limits_and_on_short_ladders() -> None:
    g, _ = governor()
    assert g.tick(0, reading(0, 92.0)).level == 4  # at the hard limit: the last level
    two = Governor(RUNGS[:2], Policy())
    assert two.tick(0, reading(0, 85.0)).level == 1
    three = Governor(RUNGS[:3], Policy())
    assert three.tick(0, reading(0, 87.0)).level == 1  # one inner level spans soft .. hard


def test_battery_levels_at_their_thresholds_and_relaxing_a_point_above_them() -> None:
    g, _ = governor(battery_saver_pct=20.0, battery_lowest_pct=10.0, min_dwell_s=0.0)
    assert g.tick(0, reading(0, battery_percent=10.0, charging=False)).level == g.saver_level  # at lowest: saver, not last
    assert g.tick(1, reading(1, battery_percent=20.0, charging=False)).level == g.saver_level  # at saver: hold (1 point margin)
    assert g.tick(2, reading(2, battery_percent=20.5, charging=False)).level == g.saver_level
    up = g.tick(3, reading(3, battery_percent=21.5, charging=False))
    assert up.level == g.saver_level - 1 and up.switched and not up.forced  # relaxing is never forced
    at_saver, _ = governor(battery_saver_pct=20.0)
    assert at_saver.tick(0, reading(0, battery_percent=20.0, charging=False)).level == 0  # exactly at the saver threshold: not below it


def test_feedback_rules_at_their_edges_and_without_their_policy() -> None:
    g, _ = governor(power_budget_mw=4000.0, power_margin=0.1, min_dwell_s=5.0)
    assert g.tick(0, reading(0, power_mw=4000.0)).level == 0  # at the budget: nothing to do
    over = g.tick(1, reading(1, power_mw=5000.0))
    assert over.level == 1 and not over.forced and over.reason == "down one level: power 5000 mW over the 4000 mW budget"
    held = g.tick(2, reading(2, power_mw=5000.0))  # feedback waits for the dwell
    assert held.level == 1 and held.reason.startswith("holding: power 5000 mW over")
    assert g.tick(6, reading(6, power_mw=3600.0)).level == 0  # exactly budget x (1 - margin): not near, relax (5 s dwelt)
    near = governor(power_budget_mw=4000.0, power_margin=0.1)[0]
    assert near.tick(0, reading(0, power_mw=3900.0)).level == 0  # near the budget at level 0: nothing forced
    assert governor()[0].tick(0, reading(0, power_mw=9000.0)).level == 0  # no budget: power asks nothing
    assert governor()[0].tick(0, reading(0), latency_ms=99.0).level == 0  # no objective: latency asks nothing
    latency, _ = governor(latency_objective_ms=2.0, min_dwell_s=0.0)
    assert latency.tick(0, reading(0), latency_ms=2.0).level == 0  # at the objective
    slow = latency.tick(1, reading(1), latency_ms=2.5)
    assert slow.reason == "down one level: latency 2.500 ms over the 2 ms objective"
    # at level 1 (careful, 3 ms): accurate (4 ms) predicted 1.4 x 4/3 = 1.87 > 2.0 x 0.9: hold
    assert latency.tick(2, reading(2), latency_ms=1.4).level == 1


def test_the_dwell_ends_exactly_at_its_length() -> None:
    g, _ = governor(latency_objective_ms=2.5, min_dwell_s=5.0)
    assert g.tick(0, reading(0), latency_ms=3.9).level == 1
    assert g.tick(5, reading(5), latency_ms=3.9).level == 2
