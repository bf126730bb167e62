"""thermal-test / battery-test: real inference under the governor while a sensor trace replays.

    edge-thermal-test --engines runs/quickstart/engines      # traces/thermal_ramp.csv
    edge-battery-test --engines runs/quickstart/engines      # traces/battery_discharge.csv
    edge-thermal-test --engines ... --live --duration 600    # the board's own sensors (jtop, else sysfs)

Every tick (one second of trace time) the governor reads the sensors and picks an
operating point; then a stream of test images runs through the runtime at batch 1, and
the same images through the static model. Off the device the slowdown that heat and a
low-power mode would cause is EMULATED (`ThrottleModel`): measured latency is divided
by a speed that falls linearly from 1 at the soft limit to --min-speed at the hard
limit, times a per-power-mode factor. Writes timeline.csv, summary.json and plot.png,
and exits 3 when the policy was broken (a hard limit exceeded outside the most
conservative point, no reaction within one tick of crossing a limit, relaxing switches
closer than the dwell time).
"""

from __future__ import annotations

import argparse
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
from tools._cli import run_main

ROOT = Path(__file__).resolve().parents[1]
SCENARIOS = {"thermal": ROOT / "traces/thermal_ramp.csv", "battery": ROOT / "traces/battery_discharge.csv"}
POLICY_BROKEN = 3


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


def parse_args(argv: list[str] | None, scenario: str) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog=f"edge-{scenario}-test", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"), help="a manifest folder (edge-quickstart writes one)")
    p.add_argument("--trace", type=Path, default=SCENARIOS[scenario])
    p.add_argument("--policy", type=Path, default=ROOT / "policies/default.json")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, default=Path(f"runs/{scenario}-test"))
    p.add_argument("--images-per-tick", type=int, default=20)
    p.add_argument("--tick-s", type=float, default=1.0)
    p.add_argument("--profile-samples", type=int, default=300, help="images to measure every operating point on first")
    p.add_argument("--objective-ms", type=float, help="latency objective (default: the policy's, else 1.3 x the static model's measured mean)")
    p.add_argument("--min-speed", type=float, default=0.5, help="emulated speed at the hard limit")
    p.add_argument("--no-emulate", action="store_true", help="report measured latency as it is")
    p.add_argument("--live", action="store_true", help="read this board's sensors (jtop, else sysfs) in real time; no emulation")
    p.add_argument("--duration", type=float, default=600.0, help="seconds, with --live")
    p.add_argument("--sysfs-root", type=Path, default=Path("/"))
    return p.parse_args(argv)


def main(argv: list[str] | None, scenario: str) -> int:
    args = parse_args(argv, scenario)
    runtime = Runtime(args.engines)
    try:
        return run(args, runtime, scenario)
    finally:
        runtime.close()


def run(args: argparse.Namespace, runtime: Runtime, scenario: str) -> int:
    manifest = runtime.manifest
    data = load_dataset(args.data, "test")
    if tuple(data.input_shape) != tuple(manifest.input.shape[1:]):
        raise UserError(f"{args.data} images are {data.input_shape}, the engines take {tuple(manifest.input.shape[1:])}")
    static = StaticModel(manifest.path_of(manifest.static_model["file"])) if manifest.static_model else None
    profile = profile_points(runtime, static, data.subset(slice(0, args.profile_samples)))
    policy = load_policy(args.policy)
    objective = args.objective_ms or policy.latency_objective_ms or 1.3 * profile["static" if static else "full"]["mean_ms"]
    policy = dataclasses.replace(policy, latency_objective_ms=objective)
    rungs = ladder(manifest, profile, policy.points)
    governor = Governor(rungs, policy, runtime.set_operating_point)
    source, clock, ticks = open_source(args)
    throttle = None if (args.no_emulate or args.live) else ThrottleModel(args.min_speed)
    rows = drive(args, runtime, static, governor, source, clock, ticks, data, throttle)
    source.close()
    violations = check_policy(rows, policy, len(rungs) - 1, governor.saver_level)
    summary = summarize(args, scenario, rows, rungs, policy, throttle, violations, static is not None)
    args.out.mkdir(parents=True, exist_ok=True)
    write_timeline(args.out / "timeline.csv", rows)
    write_json_atomic(args.out / "summary.json", summary)
    plot_timeline(rows, rungs, summary, args.out / "plot.png")
    print_summary(summary)
    return POLICY_BROKEN if violations else 0


def profile_points(runtime: Runtime, static: StaticModel | None, data: Dataset) -> dict[str, dict[str, float]]:
    """Every operating point (and the static model) measured here, interleaved, batch 1."""
    configs = {"static": static.config()} if static is not None else {}
    for point in runtime.manifest.operating_points:
        configs[point.name] = runtime_config(runtime, point_name=point.name)
    measured = measure_interleaved(configs, data, progress=False)
    return {name: {"mean_ms": m.mean_ms, "accuracy": m.accuracy} for name, m in measured.items()}


def open_source(args: argparse.Namespace) -> tuple[SensorSource, Callable[[], float], int]:
    """The sensor source, the clock the governor runs on, and how many ticks to run."""
    if args.live:
        from edge.sensors.jtop_source import JtopSource
        from edge.sensors.sysfs import SysfsSource

        source, skipped = open_first([JtopSource, lambda: SysfsSource(args.sysfs_root)])
        for reason in skipped:
            print(f"sensor source skipped: {reason}")
        return source, time.monotonic, int(args.duration / args.tick_s)
    simulated = [0.0]
    replay = ReplaySource(args.trace, clock=lambda: simulated[0])
    start, end = replay.readings[0].time, replay.readings[-1].time
    simulated[0] = start

    def clock() -> float:
        return simulated[0]

    clock.advance = lambda dt: simulated.__setitem__(0, simulated[0] + dt)  # type: ignore[attr-defined]
    return replay, clock, int((end - start) / args.tick_s) + 1


def drive(
    args: argparse.Namespace, runtime: Runtime, static: StaticModel | None, governor: Governor, source: SensorSource,
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
        index = [(cursor + i) % len(images) for i in range(args.images_per_tick)]
        cursor += args.images_per_tick
        ours = serve(lambda x: runtime.infer(x).predictions[0], images, data.labels, index, speed)
        theirs = serve(lambda x: static.predict(x)[0].argmax(), images, data.labels, index, speed) if static else None
        latency_feedback = float(np.mean(ours[0]))
        objective = governor.policy.latency_objective_ms
        fresh = reading is not None and now - reading.time <= governor.policy.stale_after_s and temperature is not None
        rows.append(row_of(decision, reading, fresh, temperature, soft, hard, speed, ours, theirs, objective))
        if hasattr(clock, "advance"):
            clock.advance(args.tick_s)
        else:
            time.sleep(max(0.0, args.tick_s - (time.monotonic() - started)))
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


def summarize(args: argparse.Namespace, scenario: str, rows: list[dict[str, Any]], rungs: list[Rung], policy: Policy,
              throttle: ThrottleModel | None, violations: list[str], with_static: bool) -> dict[str, Any]:
    requests = sum(r["requests"] for r in rows)
    summary: dict[str, Any] = {
        "scenario": scenario, "trace": None if args.live else str(args.trace), "live": args.live, "engines": str(args.engines),
        "ticks": len(rows), "requests": requests, "latency_objective_ms": policy.latency_objective_ms,
        "emulation": throttle.describe() if throttle else "none: measured latency",
        "ladder": [dataclasses.asdict(r) for r in rungs],
        "switches": sum(r["switched"] for r in rows), "forced_switches": sum(r["forced"] for r in rows),
        "misses": sum(r["misses"] for r in rows), "accuracy": sum(r["correct"] for r in rows) / requests,
        "mean_latency_ms": float(np.mean([r["latency_ms"] for r in rows])),
        "time_at_point": {p.point: sum(r["point"] == p.point for r in rows) * args.tick_s for p in rungs},
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


def print_summary(s: dict[str, Any]) -> None:
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


def thermal_cli() -> int:
    return run_main(lambda argv: main(argv, "thermal"))


def battery_cli() -> int:
    return run_main(lambda argv: main(argv, "battery"))


if __name__ == "__main__":
    import sys

    scenario = sys.argv.pop(1) if len(sys.argv) > 1 and sys.argv[1] in SCENARIOS else "thermal"
    raise SystemExit(run_main(lambda argv: main(argv, scenario)))
