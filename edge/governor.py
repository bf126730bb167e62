"""The governor: each tick, a sensor reading and a policy pick the operating point.

The manifest's operating points form a ladder from the most accurate (level 0) to the
most conservative (cheapest, the last level), ordered by their latency measured on the
device; a point that is slower and no more accurate than another is left off. Each
rule of the policy asks for a level at least this conservative:

  thermal   at or above the hard limit: the last level; between the soft and the hard
            limit: from level 1 rising linearly to the last; below the soft limit: 0
  battery   discharging below battery_lowest_pct: the last level; below
            battery_saver_pct: the cheaper half of the ladder
  power     total power above the budget: one level down per dwell time until it is not
  latency   requests slower than the objective: one level down per dwell time
  base cap  at or above base_only_above_c: only points that run every stage at its base
            variant (adaptive depth), until it is hysteresis_c below again

The thermal and battery rules and a lost sensor are limits: the governor moves to the
level they ask for at once (a forced switch), whenever the last switch was. Everything
else waits min_dwell_s after the last switch: the power and latency feedback, and every
move back up, which goes one level at a time and only once every rule allows it with
its margin (thermal limits hysteresis_c lower, the power budget and the latency
objective power_margin and latency_margin lower, the latter for the next point's
predicted latency). A missing or stale reading, or a field that was present and is
gone, sends it to the last level and says why.
"""

from __future__ import annotations

import collections
import json
import math
import threading
from collections.abc import Callable, Collection, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from edge.errors import ManifestError, UserError
from edge.frontier import pareto_front
from edge.manifest import Manifest
from edge.sensors.base import Reading

DEFAULT_SOFT_C, DEFAULT_HARD_C = 80.0, 95.0  # when the board has no trip points


class PolicyError(UserError):
    """A policy file that cannot be used."""


@dataclass(frozen=True)
class Policy:
    soft_limit_c: float | None = None  # None: the board's lowest passive trip point, else 80
    hard_limit_c: float | None = None  # None: its lowest hot or critical trip point, else 95
    hysteresis_c: float = 3.0
    zones: tuple[str, ...] = ()  # temperature zones that count (empty: all of them, the hottest decides)
    power_budget_mw: float | None = None
    power_margin: float = 0.1  # relax only below budget x (1 - margin)
    battery_saver_pct: float = 20.0
    battery_lowest_pct: float = 10.0
    latency_objective_ms: float | None = None
    latency_margin: float = 0.1  # relax only if the next point is predicted under objective x (1 - margin)
    min_dwell_s: float = 5.0
    stale_after_s: float = 3.0
    points: tuple[str, ...] = ()  # the ladder by name, most accurate first (empty: from the manifest)
    base_only_above_c: float | None = None  # this hot and hotter: base variants only (no full stage, no per-input choice)

    def __post_init__(self) -> None:
        if self.soft_limit_c is not None and self.hard_limit_c is not None and self.soft_limit_c >= self.hard_limit_c:
            raise PolicyError(f"soft_limit_c ({self.soft_limit_c}) must be below hard_limit_c ({self.hard_limit_c})")
        if self.battery_lowest_pct > self.battery_saver_pct:
            raise PolicyError("battery_lowest_pct must not be above battery_saver_pct")
        for name in ("hysteresis_c", "power_margin", "latency_margin", "min_dwell_s", "stale_after_s"):
            if getattr(self, name) < 0:
                raise PolicyError(f"{name} must not be negative")


def load_policy(path: Path | str) -> Policy:
    """A policy from a JSON object whose keys are Policy's fields (all optional)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except OSError as exc:
        raise PolicyError(f"{path}: cannot read the policy ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise PolicyError(f"{path}: not valid JSON ({exc.msg}, line {exc.lineno})") from None
    if not isinstance(data, dict):
        raise PolicyError(f"{path}: a policy is a JSON object")
    known = {f.name for f in fields(Policy)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise PolicyError(f"{path}: unknown policy keys {unknown}; known: {sorted(known)}")
    for key in ("zones", "points"):
        if key in data:
            if not isinstance(data[key], list) or not all(isinstance(v, str) for v in data[key]):
                raise PolicyError(f"{path}: {key} must be a list of names, got {data[key]!r}")
            data[key] = tuple(data[key])
    for key, value in data.items():
        if key not in ("zones", "points") and value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise PolicyError(f"{path}: {key} must be a number or null, got {value!r}")
    return Policy(**data)


@dataclass(frozen=True)
class Rung:
    """One level of the ladder: an operating point and what it costs."""

    point: str
    mean_ms: float
    accuracy: float | None = None
    base_only: bool = False  # every stage that has a base variant runs it (what the base cap allows)


def ladder(
    manifest: Manifest, measured: dict[str, dict[str, float]] | None = None, names: Sequence[str] = (),
    runnable: Collection[str] | None = None,
) -> list[Rung]:
    """The operating points as a ladder, most accurate first. Costs come from `measured`
    (name -> {mean_ms, accuracy}), else from each point's `measured` in the manifest.
    With `names` the order is the caller's; otherwise by cost, dominated points left off,
    among the `runnable` ones (default: all; a backend without the static engine)."""
    rungs = []
    wanted = list(names) or [p.name for p in manifest.operating_points if runnable is None or p.name in runnable]
    for name in wanted:
        figures = (measured or {}).get(name) or manifest.point(name).measured
        if "mean_ms" not in figures:
            raise ManifestError(f"operating point {name!r} has no measured latency (run edge-calibrate, or measure it)")
        rungs.append(Rung(name, float(figures["mean_ms"]), figures.get("accuracy"), manifest.runs_base_only(name)))
    if names:
        return rungs
    return pareto_front(rungs, lambda r: r.mean_ms, lambda r: r.accuracy)[::-1]


@dataclass(frozen=True)
class Decision:
    time: float
    point: str
    level: int
    switched: bool
    forced: bool  # a limit or a lost sensor demanded it: not held back by the dwell time
    reason: str
    sensor_ok: bool = True  # False: lost, stale, or lacking a field the policy needs
    temperature_c: float | None = None
    power_mw: float | None = None
    battery_percent: float | None = None
    latency_ms: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class _Demand:
    """What the rules ask for: the least conservative level the limits allow now (must),
    the level the feedback rules step to (step, not before the dwell), and the level
    every rule would allow relaxing to (relax), with the reasons."""

    must: int = 0
    step: int = 0
    relax: int = 0
    reasons: list[str] = field(default_factory=list)

    def need(self, level: int, relax: int, reason: str, limit: bool = True) -> None:
        if level > 0 and reason:
            self.reasons.append(reason)
        if limit:
            self.must = max(self.must, level)
        else:
            self.step = max(self.step, level)
        self.relax = max(self.relax, relax)


class Governor:
    """Picks an operating point per tick; applies it to `apply` (e.g. a runtime's
    set_operating_point). Thread-safe: ticks and state reads may come from any thread."""

    def __init__(
        self, rungs: Sequence[Rung], policy: Policy = Policy(), apply: Callable[[str], None] | None = None,
        history: int = 1000,
    ) -> None:
        if not rungs:
            raise ManifestError("the governor needs at least one operating point")
        if policy.base_only_above_c is not None and not any(r.base_only for r in rungs):
            raise PolicyError("base_only_above_c needs a point on the ladder that runs every stage at its base variant; there is none")
        self.rungs = list(rungs)
        self._capped = False  # the base cap holds (hot, or not yet hysteresis_c below it)
        self.policy = policy
        self.apply = apply
        self.level = 0
        self.last_switch: float | None = None
        self.decisions: collections.deque[Decision] = collections.deque(maxlen=history)
        self._seen: set[str] = set()
        self._lock = threading.Lock()
        if apply is not None:
            apply(self.rungs[0].point)

    @property
    def last(self) -> int:
        return len(self.rungs) - 1

    @property
    def saver_level(self) -> int:
        return min(self.last, len(self.rungs) // 2)

    @property
    def point(self) -> str:
        return self.rungs[self.level].point

    def limits(self, reading: Reading) -> tuple[float, float]:
        """(soft, hard) in deg C: the policy's, else the board's trip points, else defaults."""
        p = self.policy
        trips = [t for zone, t in reading.trip_points.items() if not p.zones or zone in p.zones]
        passive = [t["passive"] for t in trips if "passive" in t]
        hot = [t[k] for t in trips for k in ("hot", "critical") if k in t]
        soft = p.soft_limit_c if p.soft_limit_c is not None else min(passive, default=DEFAULT_SOFT_C)
        hard = p.hard_limit_c if p.hard_limit_c is not None else min(hot, default=DEFAULT_HARD_C)
        return (soft, hard) if soft < hard else (hard - max(p.hysteresis_c, 1.0), hard)

    def tick(self, now: float, reading: Reading | None, latency_ms: float | None = None, error: str | None = None) -> Decision:
        """One decision. `reading` None (with `error` saying why) means the source failed;
        `latency_ms` is the recent mean request latency at the current point, if known."""
        with self._lock:
            problem = self._sensor_problem(now, reading, error)
            temperature = power = battery = None
            if reading is not None:
                temperature, power, battery = self._temperature(reading), reading.power_mw, reading.battery_percent
            if problem is not None:
                target, forced, reason = self.last, True, problem
            else:
                assert reading is not None
                target, forced, reason = self._cap(*self._choose(now, self._demand(reading, latency_ms)), temperature)
            switched = target != self.level
            if switched:
                self.level, self.last_switch = target, now
                if self.apply is not None:
                    self.apply(self.point)
            decision = Decision(
                now, self.point, self.level, switched, forced and switched, reason, problem is None, temperature, power, battery, latency_ms,
            )
            self.decisions.append(decision)
            return decision

    def _sensor_problem(self, now: float, reading: Reading | None, error: str | None) -> str | None:
        if reading is None:
            return f"sensor lost: {error or 'no reading'}"
        age = now - reading.time
        if age > self.policy.stale_after_s:
            return f"sensor stale: last reading {age:.1f} s old (limit {self.policy.stale_after_s:g} s)"
        gone = sorted(f for f in self._seen if f in reading.missing)
        self._seen |= {f for f in ("temperature", "power", "battery") if f not in reading.missing}
        needed = ["temperature"] + (["power"] if self.policy.power_budget_mw is not None else [])
        lacking = sorted(set(gone) | {f for f in needed if f in reading.missing})
        if lacking:
            return f"reading lacks {', '.join(lacking)}"
        if self.policy.zones and self._temperature(reading) is None:
            return f"none of the zones {list(self.policy.zones)} in the reading"
        return None

    def _temperature(self, reading: Reading) -> float | None:
        zones = self.policy.zones
        values = [t for z, t in reading.temperatures.items() if not zones or z in zones]
        return max(values) if values else None

    def _demand(self, reading: Reading, latency_ms: float | None) -> _Demand:
        p, demand = self.policy, _Demand()
        soft, hard = self.limits(reading)
        temperature = self._temperature(reading)
        assert temperature is not None
        demand.need(
            self._thermal_level(temperature, soft, hard), self._thermal_level(temperature + p.hysteresis_c, soft, hard),
            f"{temperature:.1f} C (soft {soft:g}, hard {hard:g})",
        )
        if reading.battery_percent is not None and reading.charging is not True:
            level = self._battery_level(reading.battery_percent)
            demand.need(level, self._battery_level(reading.battery_percent - 1.0), f"battery {reading.battery_percent:.0f}% discharging")
        if p.power_budget_mw is not None and reading.power_mw is not None:
            if reading.power_mw > p.power_budget_mw:
                demand.need(min(self.level + 1, self.last), self.level + 1, f"power {reading.power_mw:.0f} mW over the {p.power_budget_mw:g} mW budget", limit=False)
            elif reading.power_mw > p.power_budget_mw * (1 - p.power_margin):
                demand.need(0, self.level, "")  # near the budget: hold
        if p.latency_objective_ms is not None and latency_ms is not None:
            if latency_ms > p.latency_objective_ms:
                demand.need(min(self.level + 1, self.last), self.level + 1, f"latency {latency_ms:.3f} ms over the {p.latency_objective_ms:g} ms objective", limit=False)
            elif self.level > 0 and self._predicted_up(latency_ms) > p.latency_objective_ms * (1 - p.latency_margin):
                demand.need(0, self.level, "")  # the next point up would come near the objective: hold
        return demand

    def _choose(self, now: float, demand: _Demand) -> tuple[int, bool, str]:
        why = "; ".join(demand.reasons) or "within every limit"
        if demand.must > self.level:
            return demand.must, True, f"down: {why}"
        waited = math.inf if self.last_switch is None else now - self.last_switch
        dwelt = waited >= self.policy.min_dwell_s
        if demand.step > self.level:
            if dwelt:
                return demand.step, False, f"down one level: {why}"
            return self.level, False, f"holding: {why}; {waited:.1f} s of the {self.policy.min_dwell_s:g} s dwell"
        if demand.relax < self.level:
            if dwelt:
                return self.level - 1, False, f"up one level: {why}"
            return self.level, False, f"holding: may relax, {waited:.1f} s of the {self.policy.min_dwell_s:g} s dwell"
        return self.level, False, f"holding: {why}"

    def _cap(self, target: int, forced: bool, reason: str, temperature: float | None) -> tuple[int, bool, str]:
        """The base cap: while it holds, the nearest base-only level at or below `target`
        (else the cheapest base-only one above it), as a limit."""
        cap = self.policy.base_only_above_c
        if cap is None or temperature is None:
            return target, forced, reason
        self._capped = temperature >= cap or (self._capped and temperature > cap - self.policy.hysteresis_c)
        if not self._capped or self.rungs[target].base_only:
            return target, forced, reason
        cheaper = [k for k, r in enumerate(self.rungs) if r.base_only and k >= target]
        capped = cheaper[0] if cheaper else max(k for k, r in enumerate(self.rungs) if r.base_only)
        return capped, True, f"base variants only: {temperature:.1f} C (cap {cap:g}); {reason}"

    def _thermal_level(self, temperature: float, soft: float, hard: float) -> int:
        if temperature >= hard:
            return self.last
        if temperature < soft or self.last == 0:
            return 0
        inner = max(self.last - 1, 1)  # levels 1 .. last-1 spread over soft .. hard
        return min(self.last, 1 + int((temperature - soft) / (hard - soft) * inner))

    def _battery_level(self, percent: float) -> int:
        if percent < self.policy.battery_lowest_pct:
            return self.last
        if percent < self.policy.battery_saver_pct:
            return self.saver_level
        return 0

    def _predicted_up(self, latency_ms: float) -> float:
        """Latency at the next level up, scaled from now by the two points' measured costs."""
        here, up = self.rungs[self.level], self.rungs[self.level - 1]
        return latency_ms * up.mean_ms / here.mean_ms

    def state(self) -> dict[str, Any]:
        """What a daemon exposes: the current point, the ladder, the last decisions."""
        with self._lock:
            return {
                "point": self.point, "level": self.level,
                "ladder": [asdict(r) for r in self.rungs], "policy": asdict(self.policy),
                "decisions": [d.to_dict() for d in list(self.decisions)[-20:]],
            }
