"""Real sysfs-format board trees in a folder (thermal zones with trip points, INA3221 and
iio power rails, nvpmodel, batteries, RAPL), as the sensor sources read them on devices."""

from __future__ import annotations

from pathlib import Path


def write(root: Path, relative: str, text: str) -> None:
    path = root / relative
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def thermal_zone(root: Path, index: int, kind: str, millic: int, trips: dict[str, int] | None = None) -> None:
    zone = f"sys/class/thermal/thermal_zone{index}"
    write(root, f"{zone}/type", kind)
    write(root, f"{zone}/temp", str(millic))
    for k, (trip_type, value) in enumerate((trips or {}).items()):
        write(root, f"{zone}/trip_point_{k}_type", trip_type)
        write(root, f"{zone}/trip_point_{k}_temp", str(value))


def ina3221_hwmon(root: Path, device: str, hwmon: str, rails: dict[str, tuple[int, int]]) -> None:
    write(root, f"sys/bus/i2c/devices/{device}/name", "ina3221")
    for n, (label, (mv, ma)) in enumerate(rails.items(), 1):
        base = f"sys/bus/i2c/devices/{device}/hwmon/{hwmon}"
        write(root, f"{base}/in{n}_label", label)
        write(root, f"{base}/in{n}_input", str(mv))
        write(root, f"{base}/curr{n}_input", str(ma))


def nvpmodel(root: Path, mode: int, names: dict[int, str]) -> None:
    write(root, "var/lib/nvpmodel/status", f"pmode:{mode:04d}")
    write(root, "etc/nvpmodel.conf", "\n".join(f"< POWER_MODEL ID={i} NAME={n} >\nCPU_ONLINE CORE_0 1" for i, n in names.items()))


def orin_nano(root: Path) -> Path:
    """JetPack 6: tj/cpu/gpu zones with trip points, one INA3221 on hwmon, nvpmodel."""
    thermal_zone(root, 0, "cpu-thermal", 51250, {"passive": 95500, "critical": 105000})
    thermal_zone(root, 1, "gpu-thermal", 49800, {"passive": 95500, "critical": 105000})
    thermal_zone(root, 2, "tj-thermal", 52100, {"hot": 99000, "critical": 105000})
    ina3221_hwmon(root, "1-0040", "hwmon1", {"VDD_IN": (5000, 1400), "VDD_CPU_GPU_CV": (5000, 500), "VDD_SOC": (5000, 300)})
    nvpmodel(root, 0, {0: "15W", 1: "25W", 2: "MAXN_SUPER", 3: "7W"})
    return root


def agx_orin(root: Path) -> Path:
    """Two INA3221 chips; the board's input rail is VIN_SYS_5V0."""
    thermal_zone(root, 0, "tj-thermal", 61000, {"passive": 96000})
    ina3221_hwmon(root, "1-0040", "hwmon2", {"VDD_GPU_SOC": (5000, 900), "VDD_CPU_CV": (5000, 400), "VIN_SYS_5V0": (5000, 700)})
    ina3221_hwmon(root, "1-0041", "hwmon3", {"NC": (0, 0), "VDDQ_VDD2_1V8AO": (1800, 500), "NC2": (0, 0)})
    nvpmodel(root, 3, {0: "MAXN", 1: "15W", 2: "30W", 3: "50W"})
    return root


def jetson_nano(root: Path) -> Path:
    """JetPack 4: rails through iio (mW), one zone offline (-256 C)."""
    thermal_zone(root, 0, "CPU-therm", 40500)
    thermal_zone(root, 1, "GPU-therm", 39000)
    thermal_zone(root, 2, "PMIC-Die", -256000)
    device = "sys/bus/i2c/devices/6-0040/iio:device0"
    for n, (name, mw) in enumerate({"POM_5V_IN": 3200, "POM_5V_GPU": 400, "POM_5V_CPU": 900}.items()):
        write(root, f"{device}/rail_name_{n}", name)
        write(root, f"{device}/in_power{n}_input", str(mw))
    write(root, "var/lib/nvpmodel/status", "pmode:0001")  # no nvpmodel.conf here: the id alone
    return root


def laptop(root: Path) -> Path:
    """A battery, mains, ACPI and package zones, Intel RAPL with a sub-zone."""
    thermal_zone(root, 0, "acpitz", 48000, {"critical": 98000})
    thermal_zone(root, 1, "x86_pkg_temp", 55000)
    write(root, "sys/class/power_supply/AC/type", "Mains")
    write(root, "sys/class/power_supply/AC/online", "0")
    write(root, "sys/class/power_supply/BAT0/type", "Battery")
    write(root, "sys/class/power_supply/BAT0/capacity", "57")
    write(root, "sys/class/power_supply/BAT0/status", "Discharging")
    write(root, "sys/class/powercap/intel-rapl:0/name", "package-0")
    write(root, "sys/class/powercap/intel-rapl:0/energy_uj", "1000000")
    write(root, "sys/class/powercap/intel-rapl:0/max_energy_range_uj", "262143328850")
    write(root, "sys/class/powercap/intel-rapl:0:0/name", "core")
    write(root, "sys/class/powercap/intel-rapl:0:0/energy_uj", "5")
    return root
