"""The thermal and battery tests: real inference under the governor while a sensor trace
replays (or the board's own sensors are read), the static model on the same images, and a
checker that judges the timeline against the policy.

Every tick (one second of trace time) the governor reads the sensors and picks an
operating point; then a stream of test images runs through the runtime at batch 1, and
the same images through the static model. Off the device the slowdown that heat and a
low-power mode would cause is EMULATED (`ThrottleModel`): measured latency is divided
by a speed that falls linearly from 1 at the soft limit to `min_speed` at the hard
limit, times a per-power-mode factor. The policy is broken by a hard limit exceeded
outside the most conservative point, no reaction within one tick of crossing a limit,
or switches closer than the dwell time that no limit forced.
"""

from __future__ import annotations

import csv
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from calibration.data import Dataset, load_dataset
from calibration.evaluate import StaticModel, measure_interleaved, runtime_config
from calibration.plots.power_test import plot_timeline
from edge.atomic import write_json_atomic
from edge.errors import UserError
from edge.governor import Governor, Policy, Rung, ladder, load_policy
from edge.runtime import Runtime
from edge.sensors import Reading, SensorError, SensorSource, open_first
from edge.sensors.replay import ReplaySource

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"thermal": ROOT / "traces/thermal_ramp.csv", "battery": ROOT / "traces/battery_discharge.csv"}


@dataclass(frozen=True)
class PowerTest:
    """One run: which trace (or live sensors), which policy, how much inference per tick."""

    scenario: str  # "thermal" or "battery": names the run
    engines: Path  # the manifest folder under test
    out: Path
    trace: Path | None = None  # None: the scenario's shipped trace
    policy: Path = ROOT / "policies/default.json"
    data: str = "fashion-mnist"
    images_per_tick: int = 20
    tick_s: float = 1.0
    profile_samples: int = 300  # images every operating point is measured on first
    objective_ms: float | None = None  # None: the policy's, else 1.3 x the static model's measured mean
    min_speed: float = 0.5  # emulated speed at the hard limit
    emulate: bool = True
    live: bool = False  # the board's sensors (jtop, else sysfs) in real time; no emulation
    duration_s: float = 600.0  # with live
    sysfs_root: Path = Path("/")

    @property
    def trace_path(self) -> Path:
        return self.trace if self.trace is not None else SCENARIOS[self.scenario]


@dataclass(frozen=True)
class ThrottleModel:
    """Emulated slowdown: speed 1 up to the soft limit, falling linearly to `min_speed` at
    the hard limit and staying there above it, times `mode_speed[nvpmodel]`."""

    min_speed: float = 0.5
    mode_speed: dict[str, float] = dataclasses.field(default_factory=lambda: {"7W": 0.5})

    def speed(self, temperature: float | None, soft: float, hard: float, mode: str | None) -> float:
        thermal = 1.0
        if temperature is not None and temperature > soft:
            thermal = 1.0 - (1.0 - self.min_speed) * min(1.0, (temperature - soft) / (hard - soft))
        return thermal * self.mode_speed.get(mode or "", 1.0)

    def describe(self) -> str:
        modes = ", ".join(f"{m} x{s:g}" for m, s in self.mode_speed.items())
        return (f"EMULATED throttling: latency = measured / speed; speed 1 below the soft limit, falling "
                f"linearly to {self.min_speed:g} at the hard limit; power modes: {modes or 'none'}")


def run_power_test(test: PowerTest, runtime: Runtime) -> dict[str, Any]:
    """Drive the runtime under its governor for the whole trace; write timeline.csv,
    summary.json and plot.png under `test.out`; return the summary (its `violations`
    say whether the policy held)."""
    manifest = runtime.manifest
    data = load_dataset(test.data, "test")
    if tuple(data.input_shape) != tuple(manifest.input.shape[1:]):
        raise UserError(f"{test.data} images are {data.input_shape}, the engines take {tuple(manifest.input.shape[1:])}")
    static = StaticModel(manifest.path_of(manifest.static_model["file"])) if manifest.static_model else None
    profile = profile_points(runtime, static, data.subset(slice(0, test.profile_samples)))
    policy = load_policy(test.policy)
    objective = test.objective_ms or policy.latency_objective_ms or 1.3 * profile["static" if static else "full"]["mean_ms"]
    policy = dataclasses.replace(policy, latency_objective_ms=objective)
    rungs = ladder(manifest, profile, policy.points)
    governor = Governor(rungs, policy, runtime.set_operating_point)
    source, clock, ticks = open_source(test)
    throttle = ThrottleModel(test.min_speed) if test.emulate and not test.live else None
    try:
        rows = drive(test, runtime, static, governor, source, clock, ticks, data, throttle)
    finally:
        source.close()
    violations = check_policy(rows, policy, len(rungs) - 1, governor.saver_level)
    summary = summarize(test, rows, rungs, policy, throttle, violations, static is not None)
    test.out.mkdir(parents=True, exist_ok=True)
    write_timeline(test.out / "timeline.csv", rows)
    write_json_atomic(test.out / "summary.json", summary)
    plot_timeline(rows, rungs, summary, test.out / "plot.png")
    return summary


def profile_points(runtime: Runtime, static: StaticModel | None, data: Dataset) -> dict[str, dict[str, float]]:
    """Every operating point (and the static model) measured here, interleaved, batch 1."""
    configs = {"static": static.config()} if static is not None else {}
    for point in runtime.manifest.operating_points:
        configs[point.name] = runtime_config(runtime, point_name=point.name)
    measured = measure_interleaved(configs, data, progress=False)
    return {name: {"mean_ms": m.mean_ms, "accuracy": m.accuracy} for name, m in measured.items()}


class TraceClock:
    """The governor's clock while a trace replays: trace time, moved on a tick at a time."""

    def __init__(self, start: float) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, dt: float) -> None:
        self.now += dt


def open_source(test: PowerTest) -> tuple[SensorSource, Callable[[], float], int]:
    """The sensor source, the clock the governor runs on, and how many ticks to run."""
    if test.live:
        from edge.sensors.jtop_source import JtopSource
        from edge.sensors.sysfs import SysfsSource

        source, skipped = open_first([JtopSource, lambda: SysfsSource(test.sysfs_root)])
        for reason in skipped:
            print(f"sensor source skipped: {reason}")
        return source, time.monotonic, int(test.duration_s / test.tick_s)
    clock = TraceClock(0.0)
    replay = ReplaySource(test.trace_path, clock=clock)
    start, end = replay.readings[0].time, replay.readings[-1].time
    clock.now = start
    return replay, clock, int((end - start) / test.tick_s) + 1


def drive(
    test: PowerTest, runtime: Runtime, static: StaticModel | None, governor: Governor, source: SensorSource,
    clock: Callable[[], float], ticks: int, data: Dataset, throttle: ThrottleModel | None,
) -> list[dict[str, Any]]:
    images = np.ascontiguousarray(data.images, dtype=np.float32)
    cursor, latency_feedback = 0, None
    rows = []
    for _ in tqdm(range(ticks), desc="ticks", leave=False):
        started = time.monotonic()
        now = clock()
        reading, error = read(source)
        decision = governor.tick(now, reading, latency_feedback, error)
        temperature, soft, hard = board_state(reading, governor.policy)
        speed = throttle.speed(temperature, soft, hard, reading.nvpmodel if reading else None) if throttle else 1.0
        index = [(cursor + i) % len(images) for i in range(test.images_per_tick)]
        cursor += test.images_per_tick
        ours = serve(lambda x: runtime.infer(x).predictions[0], images, data.labels, index, speed)
        theirs = serve(lambda x: static.predict(x)[0].argmax(), images, data.labels, index, speed) if static else None
        latency_feedback = float(np.mean(ours[0]))
        objective = governor.policy.latency_objective_ms
        fresh = reading is not None and now - reading.time <= governor.policy.stale_after_s and temperature is not None
        rows.append(row_of(decision, reading, fresh, temperature, soft, hard, speed, ours, theirs, objective))
        if isinstance(clock, TraceClock):
            clock.advance(test.tick_s)
        else:
            time.sleep(max(0.0, test.tick_s - (time.monotonic() - started)))
    return rows


def board_state(reading: Reading | None, policy: Policy) -> tuple[float | None, float, float]:
    """(hottest counted zone, soft limit, hard limit) from the raw reading and the policy,
    worked out here and not asked of the governor, so the checker judges it independently."""
    nan = float("nan")
    if reading is None:
        return None, nan, nan
    counted = {z: t for z, t in reading.temperatures.items() if not policy.zones or z in policy.zones}
    trips = [t for z, t in reading.trip_points.items() if not policy.zones or z in policy.zones]
    soft = policy.soft_limit_c if policy.soft_limit_c is not None else min((t["passive"] for t in trips if "passive" in t), default=80.0)
    hard = policy.hard_limit_c if policy.hard_limit_c is not None else min((t[k] for t in trips for k in ("hot", "critical") if k in t), default=95.0)
    if soft >= hard:  # the policy's own rule for limits that cross: soft sits a hysteresis below hard
        soft = hard - max(policy.hysteresis_c, 1.0)
    return (max(counted.values()) if counted else None), soft, hard


def read(source: SensorSource) -> tuple[Reading | None, str | None]:
    try:
        return source.read(), None
    except SensorError as exc:
        return None, str(exc)


def serve(predict: Callable[[np.ndarray], Any], images: np.ndarray, labels: np.ndarray, index: list[int], speed: float) -> tuple[list[float], int]:
    """(emulated latency of each request in ms, correct count)."""
    latencies, correct = [], 0
    for i in index:
        start = time.perf_counter()
        label = int(predict(images[i : i + 1]))
        latencies.append((time.perf_counter() - start) * 1e3 / speed)
        correct += label == int(labels[i])
    return latencies, correct


def _level_above(level: int, row: dict[str, Any]) -> bool:
    return bool(row["level"] > level)


def row_of(decision: Any, reading: Reading | None, fresh: bool, temperature: float | None, soft: float, hard: float, speed: float, ours: tuple[list[float], int],
           theirs: tuple[list[float], int] | None, objective: float | None) -> dict[str, Any]:
    row = {
        "time": decision.time, "temperature_c": temperature, "soft_c": soft, "hard_c": hard,
        "power_mw": reading.power_mw if reading else None, "battery_percent": reading.battery_percent if reading else None,
        "charging": reading.charging if reading else None, "nvpmodel": reading.nvpmodel if reading else None,
        "sensor_ok": fresh,
        "point": decision.point, "level": decision.level, "switched": decision.switched, "forced": decision.forced,
        "reason": decision.reason, "speed": speed, "requests": len(ours[0]),
        "latency_ms": float(np.mean(ours[0])), "misses": sum(ms > objective for ms in ours[0]) if objective else 0, "correct": ours[1],
    }
    if theirs is not None:
        row |= {"static_latency_ms": float(np.mean(theirs[0])), "static_misses": sum(ms > objective for ms in theirs[0]) if objective else 0,
                "static_correct": theirs[1]}
    return row


def check_policy(rows: list[dict[str, Any]], policy: Policy, last: int, saver: int) -> list[str]:
    """Broken rules, judged from the timeline's readings and levels alone (not from the
    governor's reasons or its forced flags)."""
    violations = []

    def within_a_tick(i: int, ok: Callable[[dict[str, Any]], bool]) -> bool:
        return ok(rows[i]) or (i + 1 < len(rows) and ok(rows[i + 1]))

    def limited(r: dict[str, Any]) -> bool:
        """A limit at this tick that may move the governor down at once, dwell or not."""
        temp, battery = r["temperature_c"], r["battery_percent"]
        hot = temp is not None and temp >= r["soft_c"]
        low = battery is not None and r["charging"] is not True and battery < policy.battery_saver_pct
        return hot or low or not r["sensor_ok"]

    last_switch = None
    for i, r in enumerate(rows):
        t, temp = r["time"], r["temperature_c"]
        if not r["sensor_ok"] and not within_a_tick(i, lambda x: x["level"] == last):
            violations.append(f"t={t:g}: sensor lost or stale and not at the most conservative point within a tick")
        if temp is not None and temp >= r["hard_c"] and r["level"] != last:
            violations.append(f"t={t:g}: {temp:.1f} C at or above the hard limit {r['hard_c']:g} outside the most conservative point")
        if temp is not None and temp >= r["soft_c"] and not within_a_tick(i, lambda x: x["level"] >= 1):
            violations.append(f"t={t:g}: {temp:.1f} C over the soft limit and no reaction within a tick")
        battery = r["battery_percent"]
        if battery is not None and r["charging"] is not True:
            if battery < policy.battery_lowest_pct and not within_a_tick(i, lambda x: x["level"] == last):
                violations.append(f"t={t:g}: battery {battery:.0f}% and not at the most conservative point within a tick")
            elif battery < policy.battery_saver_pct and not within_a_tick(i, lambda x: x["level"] >= saver):
                violations.append(f"t={t:g}: battery {battery:.0f}% and not at a saver point within a tick")
        dwelt = last_switch is None or t - last_switch >= policy.min_dwell_s
        if policy.power_budget_mw and r["power_mw"] and r["power_mw"] > policy.power_budget_mw and r["level"] < last and dwelt:
            if not within_a_tick(i, partial(_level_above, r["level"])):
                violations.append(f"t={t:g}: power {r['power_mw']:.0f} mW over budget and no step down within a tick")
        if i > 0 and r["level"] != rows[i - 1]["level"]:
            down = r["level"] > rows[i - 1]["level"]
            if not dwelt and not (down and limited(r)):
                violations.append(f"t={t:g}: switch {t - last_switch:g} s after the last one (dwell {policy.min_dwell_s:g} s) with no limit forcing it")
            last_switch = t
    return violations


def summarize(test: PowerTest, rows: list[dict[str, Any]], rungs: list[Rung], policy: Policy,
              throttle: ThrottleModel | None, violations: list[str], with_static: bool) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rows)
    summary: dict[str, Any] = {
        "scenario": test.scenario, "trace": None if test.live else str(test.trace), "live": test.live, "engines": str(test.engines),
        "ticks": len(rows), "requests": requests, "latency_objective_ms": policy.latency_objective_ms,
        "emulation": throttle.describe() if throttle else "none: measured latency",
        "ladder": [dataclasses.asdict(r) for r in rungs],
        "switches": sum(r["switched"] for r in rows), "forced_switches": sum(r["forced"] for r in rows),
        "misses": sum(r["misses"] for r in rows), "accuracy": sum(r["correct"] for r in rows) / requests,
        "mean_latency_ms": float(np.mean([r["latency_ms"] for r in rows])),
        "time_at_point": {p.point: sum(r["point"] == p.point for r in rows) * test.tick_s for p in rungs},
        "violations": violations,
    }
    if with_static:
        summary["static"] = {
            "misses": sum(r["static_misses"] for r in rows), "accuracy": sum(r["static_correct"] for r in rows) / requests,
            "mean_latency_ms": float(np.mean([r["static_latency_ms"] for r in rows])),
        }
    return summary


def write_timeline(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def print_summary(s: dict[str, Any]) -> None:  # the tools' console report
    print(f"\n== {s['scenario']} test: {s['ticks']} ticks, {s['requests']} requests; {s['emulation']}")
    print(f"latency objective {s['latency_objective_ms']:.3f} ms; {s['switches']} switches ({s['forced_switches']} forced)")
    print(f"governed: {s['misses']} misses ({s['misses'] / s['requests']:.1%}), accuracy {s['accuracy']:.2%}, mean {s['mean_latency_ms']:.3f} ms")
    if "static" in s:
        st = s["static"]
        print(f"static:   {st['misses']} misses ({st['misses'] / s['requests']:.1%}), accuracy {st['accuracy']:.2%}, mean {st['mean_latency_ms']:.3f} ms")
    print("time at each point: " + ", ".join(f"{p} {t:g} s" for p, t in s["time_at_point"].items()))
    if s["violations"]:
        print(f"POLICY BROKEN ({len(s['violations'])}):")
        for v in s["violations"][:20]:
            print(f"  {v}")
    else:
        print("policy kept: no violations")
