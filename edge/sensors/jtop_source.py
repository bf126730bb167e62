"""jetson-stats (`jtop`) as a sensor source: used when its service answers.

Written against jetson-stats 7.x (../shared/reference/tensorrt-jetson.md, section 6). The
import is lazy: off a Jetson, or without the service, opening raises SensorUnavailable
and `open_first` falls back to sysfs. The runtime only reads; it never sets nvpmodel
(a mode with another core mask reboots the board).
"""

from __future__ import annotations

import time
from typing import Any, Callable

from edge.sensors.base import Reading, SensorError, SensorSource, SensorUnavailable

OFFLINE_C = -200.0  # jtop reports -256 for an offline sensor


class JtopSource(SensorSource):
    name = "jtop"

    def __init__(self, interval: float = 0.5, clock: Callable[[], float] = time.monotonic) -> None:
        try:
            from jtop import JtopException, jtop
        except ImportError:
            raise SensorUnavailable("jtop: jetson-stats is not installed (the 'jetson' extra)") from None
        self.clock = clock
        self._errors: tuple[type[BaseException], ...] = (JtopException,)
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
        except self._errors as exc:
            raise SensorError(f"jtop: {exc}") from exc
        return Reading(
            self.clock(), self.name, temperatures, {}, None if total is None else float(total), rails,
            nvpmodel=None if mode is None else str(mode),
        )

    def close(self) -> None:
        try:
            self._client.close()
        except self._errors:
            pass
