"""jetson-stats (`jtop`) as a sensor source: used when its service answers.

Written against jetson-stats 7.x (../shared/reference/tensorrt-jetson.md, section 6). The
import is lazy: off a Jetson, or without the service, opening raises SensorUnavailable
and `open_first` falls back to sysfs. The runtime only reads; it never sets nvpmodel
(a mode with another core mask reboots the board). jtop gives no trip points, so they
come from sysfs (zones named alike), and a reading is dated by jtop's own sample time
so a service that stops updating goes stale.
"""

from __future__ import annotations

import datetime
import time
from typing import Any, Callable

from edge.sensors.base import OFFLINE_C, Reading, SensorError, SensorSource, SensorUnavailable


class JtopSource(SensorSource):
    name = "jtop"

    def __init__(self, interval: float = 0.5, clock: Callable[[], float] = time.monotonic, sysfs_root: str = "/") -> None:
        try:
            from jtop import JtopException, jtop
        except ImportError:
            raise SensorUnavailable("jtop: jetson-stats is not installed (the 'jetson' extra)") from None
        self.clock = clock
        self._trips = _sysfs_trips(sysfs_root)
        self._errors: tuple[type[BaseException], ...] = (JtopException, KeyError, TypeError, ValueError, AttributeError)
        self._client: Any = jtop(interval=interval)
        try:
            self._client.start()
        except JtopException as exc:  # "The jtop.service is not active..."
            raise SensorUnavailable(f"jtop: {exc}") from None

    def read(self) -> Reading:
        try:
            if not self._client.ok():
                raise SensorError("jtop: the service stopped answering")
            temperatures = {
                name: float(t["temp"]) for name, t in self._client.temperature.items()
                if t.get("online", True) and float(t["temp"]) > OFFLINE_C
            }
            power = self._client.power
            rails = {name: float(r["power"]) for name, r in power.get("rail", {}).items() if r.get("online", True)}
            total = power.get("tot", {}).get("power")
            mode = self._client.nvpmodel
            sampled = self._client.stats.get("time")
        except self._errors as exc:
            raise SensorError(f"jtop: {type(exc).__name__}: {exc}") from exc
        now = self.clock()
        age = (datetime.datetime.now() - sampled).total_seconds() if isinstance(sampled, datetime.datetime) else 0.0
        return Reading(
            now - max(0.0, age), self.name, temperatures, {z: t for z, t in self._trips.items() if z in temperatures},
            None if total is None else float(total), rails, nvpmodel=None if mode is None else str(mode),
        )

    def close(self) -> None:
        try:
            self._client.close()
        except self._errors:
            pass


def _sysfs_trips(root: str) -> dict[str, dict[str, float]]:
    """The thermal zones' trip points from sysfs, if it is there (it is on a Jetson)."""
    from edge.sensors.sysfs import SysfsSource

    try:
        return SysfsSource(root).read().trip_points
    except SensorError:
        return {}
