"""The Reading every source returns, the source interface and the fallback chain."""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from edge.errors import UserError

log = logging.getLogger(__name__)

FIELDS = ("temperature", "power", "battery", "nvpmodel")  # what a reading can lack
OFFLINE_C = -200.0  # a zone reading below this is offline (jtop reports -256)


class SensorError(UserError):
    """A source that worked stopped answering (a file vanished, the service died)."""


class SensorUnavailable(SensorError):
    """A source that cannot be used on this machine at all (no jtop service, no sysfs)."""


@dataclass(frozen=True)
class Reading:
    """One sample of the board's state. `time` is in seconds on the source's clock
    (monotonic for live sources, trace time for a replay)."""

    time: float
    source: str
    temperatures: dict[str, float] = field(default_factory=dict)  # zone -> deg C
    trip_points: dict[str, dict[str, float]] = field(default_factory=dict)  # zone -> {trip type: lowest deg C}
    power_mw: float | None = None  # total board (or package) power
    rails_mw: dict[str, float] = field(default_factory=dict)
    battery_percent: float | None = None
    charging: bool | None = None
    nvpmodel: str | None = None

    @property
    def missing(self) -> tuple[str, ...]:
        present = {
            "temperature": bool(self.temperatures),
            "power": self.power_mw is not None,
            "battery": self.battery_percent is not None,
            "nvpmodel": self.nvpmodel is not None,
        }
        return tuple(f for f in FIELDS if not present[f])

    @property
    def max_temperature(self) -> float | None:
        return max(self.temperatures.values()) if self.temperatures else None


class SensorSource(ABC):
    name = "abstract"

    @abstractmethod
    def read(self) -> Reading:
        """The current state; SensorError when the source stops answering."""

    def close(self) -> None:  # noqa: B027 - a hook: sources with nothing to release need not override it
        """Release the connection or files."""


def open_first(factories: Sequence[Callable[[], SensorSource]]) -> tuple[SensorSource, list[str]]:
    """The first source that opens and reads, and why each one before it could not.
    Raises SensorUnavailable listing every reason when none works."""
    skipped: list[str] = []
    for factory in factories:
        try:
            source = factory()
        except SensorError as exc:
            log.warning("sensor source unavailable: %s", exc)
            skipped.append(str(exc))
            continue
        try:
            source.read()
        except SensorError as exc:
            source.close()
            log.warning("sensor source unavailable: %s", exc)
            skipped.append(str(exc))
            continue
        return source, skipped
    raise SensorUnavailable("no sensor source works here: " + "; ".join(skipped))
