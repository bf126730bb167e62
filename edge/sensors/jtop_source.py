"""jetson-stats (`jtop`) as a sensor source: used when its service answers.

Written against jetson-stats 7.2 (docs/jetson.md, References; its
client is checked against the real package in tests). The import is lazy: off a Jetson,
or without the service, opening raises SensorUnavailable and `open_first` falls back to
sysfs. The runtime only reads; it never sets nvpmodel (a mode with another core mask
reboots the board). jtop gives no trip points, so they come from sysfs (zones named
alike).

Only the properties a reading needs are read (`temperature`, `power`, `nvpmodel`):
`jtop.stats` recomputes CPU, memory, GPU and fan figures on every read, so a key missing
from any of them would fail a good reading, and its `time` is the moment it is read, not
sampled. A reading is dated by when the client last received a sample from the service
(an observer jtop calls per sample), so a service that stops sending goes stale. A
client that stopped (one missed sample is enough to stop jtop's client for good) is
replaced by a new connection on the next read.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from edge.sensors.base import OFFLINE_C, Reading, SensorError, SensorSource, SensorUnavailable

ClientFactory = Callable[[float], Any]  # interval -> an unstarted jtop client


class JtopSource(SensorSource):
    name = "jtop"

    def __init__(
        self, interval: float = 0.5, clock: Callable[[], float] = time.monotonic, sysfs_root: str = "/",
        client_factory: ClientFactory | None = None,
    ) -> None:
        self._errors = _jtop_errors()
        if client_factory is None:
            try:
                from jtop import jtop
            except ImportError:
                raise SensorUnavailable("jtop: jetson-stats is not installed (the 'jetson' extra)") from None
            client_factory = lambda every: jtop(interval=every)  # noqa: E731
        self.clock = clock
        self.interval = interval
        self._factory: ClientFactory = client_factory
        self._trips = _sysfs_trips(sysfs_root)
        self._sampled: float | None = None  # our clock when the last new sample arrived
        self._stamp: Any = None  # that sample's board uptime, as the service stamped it
        self._lock = threading.Lock()
        try:
            self._client = self._connect()
        except self._errors as exc:  # "The jtop.service is not active..."
            raise SensorUnavailable(f"jtop: {exc}") from None

    def _connect(self) -> Any:
        client = self._factory(self.interval)
        client.attach(self._on_sample)
        client.start()  # waits for the first sample
        return client

    def _on_sample(self, client: Any) -> None:
        """Called by jtop's thread per sample. A stalled service has it called again with
        the last sample (jtop copies what it last got): only a new board uptime, which
        the service stamps each sample with, is a new sample."""
        try:
            stamp = client.uptime
        except self._errors:
            return
        with self._lock:
            if stamp != self._stamp:
                self._stamp, self._sampled = stamp, self.clock()

    def read(self) -> Reading:
        if not self._alive():  # stopped: its thread ended, or a sample came late
            self._reconnect()
        try:
            temperatures = {
                name: float(t["temp"]) for name, t in self._client.temperature.items()
                if t.get("online", True) and float(t["temp"]) > OFFLINE_C
            }
            power = self._client.power
            rails = {name: float(r["power"]) for name, r in power.get("rail", {}).items() if r.get("online", True)}
            total = power.get("tot", {}).get("power")
            mode = self._client.nvpmodel
        except self._errors as exc:
            raise SensorError(f"jtop: {type(exc).__name__}: {exc}") from exc
        with self._lock:
            sampled = self._sampled
        if sampled is None:
            raise SensorError("jtop: no sample received from the service yet")
        return Reading(
            sampled, self.name, temperatures, {z: t for z, t in self._trips.items() if z in temperatures},
            None if total is None else float(total), rails, nvpmodel=None if mode is None else str(mode),
        )

    def _alive(self) -> bool:
        try:
            return bool(self._client.ok(spin=True))  # spin: do not wait for the next sample
        except self._errors:  # the error its thread stored
            return False

    def _reconnect(self) -> None:
        self.close()
        try:
            self._client = self._connect()
        except self._errors as exc:
            raise SensorError(f"jtop: the service stopped answering and reconnecting failed ({exc})") from None

    def close(self) -> None:
        try:
            self._client.close()
        except self._errors:
            pass


def _jtop_errors() -> tuple[type[BaseException], ...]:
    """What a jtop client raises when its service or its data goes wrong."""
    errors: tuple[type[BaseException], ...] = (KeyError, TypeError, ValueError, AttributeError, EOFError, OSError)
    try:
        from jtop import JtopException
    except ImportError:
        return errors
    return (JtopException, *errors)


def _sysfs_trips(root: str) -> dict[str, dict[str, float]]:
    """The thermal zones' trip points from sysfs, if it is there (it is on a Jetson)."""
    from edge.sensors.sysfs import SysfsSource

    try:
        return SysfsSource(root).read().trip_points
    except SensorError:
        return {}
