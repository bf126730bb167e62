"""Raw sysfs: thermal zones with trip points, INA3221 power rails, batteries, Intel RAPL.

The root is a parameter ("/" on a device), so tests read real board trees built in a
temp dir. Layouts (docs/jetson.md, References):
  thermal   class/thermal/thermal_zone*/{type, temp (m deg C), trip_point_N_{temp,type}}
  INA3221   bus/i2c/devices/*/hwmon/hwmon*/{inN_label, inN_input (mV), currN_input (mA)} (JetPack 5+)
            bus/i2c/devices/*/iio:device*/{rail_name_N, in_powerN_input (mW)}             (JetPack 4)
  battery   class/power_supply/*/{type = Battery, capacity (%), status}
  RAPL      class/powercap/intel-rapl:N/{name, energy_uj, max_energy_range_uj} (cumulative, wraps)
  nvpmodel  var/lib/nvpmodel/status ("pmode:0002"), named by etc/nvpmodel.conf
Total power: the board's input rail (VDD_IN, POM_5V_IN) where there is one, else the
sum of the rails read (AGX Orin has no input rail on its monitors), else the sum of the
RAPL packages (which needs two reads).

Zones are named like jtop names them: the type cut at the first '-', else at the first
'_' ("tj-thermal" -> "tj", "CPU_therm" -> "CPU"). Channels and counters that cannot be
read when the source opens (a disabled INA3221 channel, RAPL without root) are left out
and their field reported missing; one that could be read and stops is a lost sensor
(SensorError). A reading's time is when it was read: sysfs has no sample time, so values
frozen by a stuck driver cannot be told from steady ones.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from pathlib import Path

from edge.sensors.base import OFFLINE_C, Reading, SensorError, SensorSource, SensorUnavailable

INPUT_RAILS = ("VDD_IN", "POM_5V_IN")  # the whole board's draw, where a monitor has it


class SysfsSource(SensorSource):
    name = "sysfs"

    def __init__(self, root: Path | str = "/", clock: Callable[[], float] = time.monotonic) -> None:
        self.root = Path(root)
        self.clock = clock
        sys_dir = self.root / "sys"
        if not sys_dir.is_dir():
            raise SensorUnavailable(f"sysfs: {sys_dir} does not exist")
        self._zones = sorted((sys_dir / "class/thermal").glob("thermal_zone*"))
        self._hwmon_rails = [r for r in _hwmon_rails(sys_dir) if all(_number(f) is not None or f.name.endswith("_label") for f in r)]
        self._iio_rails = [r for r in _iio_rails(sys_dir) if _number(r[1]) is not None]
        self._batteries = [p for p in sorted((sys_dir / "class/power_supply").glob("*")) if _text(p / "type") == "Battery"]
        packages = sorted(p for p in (sys_dir / "class/powercap").glob("intel-rapl:*") if ":" not in p.name.split("intel-rapl:", 1)[1])
        # A counter readable now, with its wrap-around range: anything else cannot give power.
        self._rapl = {p: int(r) for p in packages if _number(p / "energy_uj") is not None and (r := _number(p / "max_energy_range_uj"))}
        self._rapl_last: dict[Path, tuple[float, int]] = {}
        self._nvpmodel_status = self.root / "var/lib/nvpmodel/status"
        if not (self._zones or self._hwmon_rails or self._iio_rails or self._batteries or self._rapl):
            raise SensorUnavailable(f"sysfs: no thermal zone, power rail, battery or RAPL counter under {sys_dir}")

    def read(self) -> Reading:
        now = self.clock()
        temperatures, trips = self._thermal()
        rails = self._rails()
        battery, charging = self._battery()
        power = next((rails[r] for r in INPUT_RAILS if r in rails), None)
        if power is None and rails:
            power = sum(rails.values())
        if power is None and self._rapl:
            power = self._rapl_power(now)
        return Reading(now, self.name, temperatures, trips, power, rails, battery, charging, self._nvpmodel())

    def _thermal(self) -> tuple[dict[str, float], dict[str, dict[str, float]]]:
        temperatures: dict[str, float] = {}
        trips: dict[str, dict[str, float]] = {}
        for zone in self._zones:
            kind = _text(zone / "type")
            if kind is None:
                raise SensorError(f"sysfs: {zone} vanished")
            raw = _number(zone / "temp")
            if raw is None or raw / 1000.0 < OFFLINE_C:
                continue  # an offline sensor: that zone is missing from this reading
            name = _unique(zone_name(kind), temperatures)
            temperatures[name] = raw / 1000.0
            zone_trips = _trip_points(zone)
            if zone_trips:
                trips[name] = zone_trips
        return temperatures, trips

    def _rails(self) -> dict[str, float]:
        rails: dict[str, float] = {}
        for label_file, volt_file, curr_file in self._hwmon_rails:
            label, mv, ma = _text(label_file), _number(volt_file), _number(curr_file)
            if label is None or mv is None or ma is None:
                raise SensorError(f"sysfs: INA3221 rail {label_file.parent} stopped answering")
            rails[label] = mv * ma / 1000.0
        for name_file, power_file in self._iio_rails:
            label, mw = _text(name_file), _number(power_file)
            if label is None or mw is None:
                raise SensorError(f"sysfs: INA3221 rail {name_file.parent} stopped answering")
            rails[label] = float(mw)
        return rails

    def _battery(self) -> tuple[float | None, bool | None]:
        for supply in self._batteries:
            capacity = _number(supply / "capacity")
            if capacity is None:
                raise SensorError(f"sysfs: battery {supply.name} stopped answering")
            status = _text(supply / "status")
            return float(capacity), None if status in (None, "Unknown") else status in ("Charging", "Full")
        return None, None

    def _rapl_power(self, now: float) -> float | None:
        """Package power from the energy counters' change since the last read (None the first time)."""
        total, complete = 0.0, True
        for package, wrap in self._rapl.items():
            energy = _number(package / "energy_uj")
            if energy is None:
                raise SensorError(f"sysfs: RAPL counter {package.name} unreadable (root only on some kernels)")
            last = self._rapl_last.get(package)
            self._rapl_last[package] = (now, int(energy))
            if last is None or now <= last[0]:
                complete = False
                continue
            delta = int(energy) - last[1]
            if delta < 0:  # the counter wrapped
                delta += wrap
            total += delta / (now - last[0]) / 1000.0  # uJ/s = uW -> mW
        return total if complete else None

    def _nvpmodel(self) -> str | None:
        """The power mode's name: the id nvpmodel saved ("pmode:0002"), named by
        /etc/nvpmodel.conf ("< POWER_MODEL ID=2 NAME=MAXN_SUPER >"); ids differ per board."""
        match = re.search(r"pmode:0*(\d+)", _text(self._nvpmodel_status) or "")
        if match is None:
            return None
        mode = match.group(1)
        names = re.findall(r"POWER_MODEL\s+ID=(\d+)\s+NAME=(\S+?)\s*>", _text(self.root / "etc/nvpmodel.conf") or "")
        return dict(names).get(mode, f"mode {mode}")


def _hwmon_rails(sys_dir: Path) -> list[tuple[Path, Path, Path]]:
    rails = []
    for device in sorted((sys_dir / "bus/i2c/devices").glob("*")):
        if _text(device / "name") != "ina3221":
            continue
        for label in sorted(device.glob("hwmon/hwmon*/in*_label")):
            n = label.name[2:].split("_", 1)[0]
            rails.append((label, label.with_name(f"in{n}_input"), label.with_name(f"curr{n}_input")))
    return rails


def _iio_rails(sys_dir: Path) -> list[tuple[Path, Path]]:
    rails = []
    for name_file in sorted((sys_dir / "bus/i2c/devices").glob("*/iio:device*/rail_name_*")):
        n = name_file.name.rsplit("_", 1)[1]
        rails.append((name_file, name_file.with_name(f"in_power{n}_input")))
    return rails


def _trip_points(zone: Path) -> dict[str, float]:
    """The lowest trip temperature of each type (passive, active, hot, critical)."""
    trips: dict[str, float] = {}
    for temp_file in zone.glob("trip_point_*_temp"):
        kind = _text(temp_file.with_name(temp_file.name.replace("_temp", "_type")))
        value = _number(temp_file)
        if kind and value is not None and value > 0:
            trips[kind] = min(trips.get(kind, float("inf")), value / 1000.0)
    return trips


def zone_name(kind: str) -> str:
    """jtop's name for a thermal zone type: cut at the first '-', else at the first '_'
    ("tj-thermal" -> "tj", "CPU_therm" -> "CPU"), so trip points match jtop's zones."""
    return kind.split("-", 1)[0] if "-" in kind else kind.split("_", 1)[0]


def _unique(name: str, taken: dict[str, float]) -> str:
    if name not in taken:
        return name
    k = 1
    while f"{name}.{k}" in taken:
        k += 1
    return f"{name}.{k}"


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:  # gone, or a driver refusing the read (EINVAL, ENODATA)
        return None


def _number(path: Path) -> float | None:
    text = _text(path)
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return None
