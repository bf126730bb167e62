"""Replay a recorded trace as a sensor source: CSV with a header, or JSON lines.

Keys (CSV columns or JSON fields; an empty cell or absent key = not measured):
  time                  seconds, increasing (required)
  temp.<zone>           deg C
  trip.<zone>.<type>    a trip point, deg C (passive, hot, critical...)
  power_mw              total power
  rail.<name>           a rail's power, mW
  battery_percent       0-100
  charging              true / false
  nvpmodel              the power mode's name
`read()` returns the last row at or before the clock's time. The clock is given (a
test or script steps it) or is wall time from the first read. After the last row the
same row keeps coming back with its old time, so a governor sees the source go stale.
"""

from __future__ import annotations

import bisect
import csv
import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from edge.errors import InputError
from edge.sensors.base import Reading, SensorError, SensorSource, SensorUnavailable


class ReplaySource(SensorSource):
    name = "replay"

    def __init__(self, path: Path | str, clock: Callable[[], float] | None = None) -> None:
        self.path = Path(path)
        self.readings = load_trace(self.path)
        self._times = [r.time for r in self.readings]
        self._clock = clock
        self._started: float | None = None

    def now(self) -> float:
        if self._clock is not None:
            return self._clock()
        if self._started is None:
            self._started = time.monotonic()
        return self._times[0] + time.monotonic() - self._started

    def read(self) -> Reading:
        t = self.now()
        index = bisect.bisect_right(self._times, t) - 1
        if index < 0:
            raise SensorError(f"replay: {self.path.name} has no reading at or before t={t:g} s")
        return self.readings[index]


def load_trace(path: Path) -> list[Reading]:
    if not path.is_file():
        raise SensorUnavailable(f"replay: trace {path} not found")
    if path.suffix in (".jsonl", ".json"):
        rows = _json_rows(path)
    else:
        with path.open(newline="") as f:
            rows = [(i + 2, row) for i, row in enumerate(csv.DictReader(f))]
    readings = [_reading(row, f"{path}:{line}") for line, row in rows]
    if not readings:
        raise InputError(f"{path}: the trace has no rows")
    times = [r.time for r in readings]
    if any(b <= a for a, b in zip(times, times[1:])):
        raise InputError(f"{path}: times must increase row by row")
    return readings


def _json_rows(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    rows = []
    for line_no, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append((line_no, json.loads(line)))
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}: not JSON ({exc.msg})") from None
    return rows


def _reading(row: dict[str, Any], where: str) -> Reading:
    try:
        values = {k.strip(): v for k, v in row.items() if k is not None and v not in (None, "")}
        temperatures: dict[str, float] = {}
        trips: dict[str, dict[str, float]] = {}
        rails: dict[str, float] = {}
        for key, value in values.items():
            if key.startswith("temp."):
                temperatures[key[5:]] = float(value)
            elif key.startswith("trip."):
                zone, kind = key[5:].rsplit(".", 1)
                trips.setdefault(zone, {})[kind] = float(value)
            elif key.startswith("rail."):
                rails[key[5:]] = float(value)
        charging = values.get("charging")
        return Reading(
            time=float(values["time"]), source="replay", temperatures=temperatures, trip_points=trips,
            power_mw=_optional(values.get("power_mw")), rails_mw=rails,
            battery_percent=_optional(values.get("battery_percent")),
            charging=None if charging is None else str(charging).strip().lower() in ("true", "1", "yes"),
            nvpmodel=None if values.get("nvpmodel") is None else str(values["nvpmodel"]),
        )
    except KeyError:
        raise InputError(f"{where}: a trace row needs a 'time'") from None
    except (ValueError, TypeError) as exc:
        raise InputError(f"{where}: malformed value ({exc})") from None


def _optional(value: Any) -> float | None:
    return None if value is None else float(value)


def write_trace(path: Path, readings: Iterable[Reading]) -> None:
    """Readings as a CSV trace that ReplaySource reads back."""
    rows = [reading_row(r) for r in readings]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, columns)
        writer.writeheader()
        writer.writerows(rows)


def reading_row(r: Reading) -> dict[str, Any]:
    row: dict[str, Any] = {"time": r.time}
    row |= {f"temp.{k}": v for k, v in r.temperatures.items()}
    row |= {f"trip.{z}.{k}": v for z, trips in r.trip_points.items() for k, v in trips.items()}
    row |= {"power_mw": r.power_mw, "battery_percent": r.battery_percent, "charging": r.charging, "nvpmodel": r.nvpmodel}
    row |= {f"rail.{k}": v for k, v in r.rails_mw.items()}
    return row
