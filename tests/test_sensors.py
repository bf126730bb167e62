"""Sensor sources on real sysfs-format board trees built in temp dirs, replayed traces, fallback."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

import pytest

from edge.errors import InputError
from edge.sensors import Reading, SensorError, SensorUnavailable, open_first
from edge.sensors.jtop_source import JtopSource
from edge.sensors.replay import ReplaySource, load_trace, write_trace
from edge.sensors.sysfs import SysfsSource
from tests.boards import agx_orin, jetson_nano, laptop, orin_nano, thermal_zone, write


class Clock:
    def __init__(self, t: float = 100.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# --- boards --------------------------------------------------------------------------------------

def test_orin_nano_reads_zones_trips_rails_and_power_mode(tmp_path: Path) -> None:
    reading = SysfsSource(orin_nano(tmp_path), clock=Clock(7.0)).read()
    assert reading.time == 7.0 and reading.source == "sysfs"
    assert reading.temperatures == {"cpu": 51.25, "gpu": 49.8, "tj": 52.1}  # named as jtop names them
    assert reading.trip_points["tj"] == {"hot": 99.0, "critical": 105.0}
    assert reading.rails_mw == {"VDD_IN": 7000.0, "VDD_CPU_GPU_CV": 2500.0, "VDD_SOC": 1500.0}
    assert reading.power_mw == 7000.0  # the input rail, not the sum
    assert reading.nvpmodel == "15W" and reading.battery_percent is None
    assert reading.missing == ("battery",) and reading.max_temperature == 52.1


def test_agx_orin_finds_both_ina3221_chips_and_sums_its_rails(tmp_path: Path) -> None:
    """AGX Orin's monitors have no board input rail: the total is the rails' sum."""
    root = agx_orin(tmp_path)
    disabled = root / "sys/bus/i2c/devices/1-0041/hwmon/hwmon3/in3_input"
    disabled.unlink()
    disabled.mkdir()  # a disabled channel: reading it fails (as ENODATA does on the board)
    reading = SysfsSource(root).read()
    assert set(reading.rails_mw) == {"VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "NC", "VDDQ_VDD2_1V8AO"}
    assert reading.power_mw == 4500.0 + 2000.0 + 3500.0 + 900.0 and reading.nvpmodel == "50W"


def test_jetson_nano_reads_iio_rails_and_skips_an_offline_zone(tmp_path: Path) -> None:
    reading = SysfsSource(jetson_nano(tmp_path)).read()
    assert reading.temperatures == {"CPU": 40.5, "GPU": 39.0}
    assert reading.rails_mw == {"POM_5V_IN": 3200.0, "POM_5V_GPU": 400.0, "POM_5V_CPU": 900.0}
    assert reading.power_mw == 3200.0 and reading.nvpmodel == "mode 1"


def test_laptop_battery_and_rapl_power_with_wraparound(tmp_path: Path) -> None:
    root = laptop(tmp_path)
    clock = Clock(10.0)
    source = SysfsSource(root, clock=clock)
    first = source.read()
    assert first.battery_percent == 57.0 and first.charging is False
    assert first.power_mw is None and "power" in first.missing  # a counter needs two reads
    clock.t = 12.0
    write(root, "sys/class/powercap/intel-rapl:0/energy_uj", str(1000000 + 30_000_000))  # 30 J in 2 s
    assert source.read().power_mw == pytest.approx(15000.0)
    clock.t = 14.0
    write(root, "sys/class/powercap/intel-rapl:0/energy_uj", str(262143328850 - 5_000_000))
    source.read()
    clock.t = 15.0
    write(root, "sys/class/powercap/intel-rapl:0/energy_uj", str(5_000_000))  # wrapped: 10 J in 1 s
    assert source.read().power_mw == pytest.approx(10000.0)
    write(root, "sys/class/power_supply/BAT0/status", "Charging")
    assert source.read().charging is True


def test_an_unreadable_rapl_counter_loses_power_but_not_the_rest(tmp_path: Path) -> None:
    """RAPL is root-only on some kernels: the battery and temperatures still come."""
    root = laptop(tmp_path)
    counter = root / "sys/class/powercap/intel-rapl:0/energy_uj"
    counter.unlink()
    counter.mkdir()  # reading it fails, as EACCES does for a user
    source = SysfsSource(root)
    for _ in range(2):
        reading = source.read()
        assert reading.power_mw is None and reading.battery_percent == 57.0 and reading.temperatures


def test_a_rapl_counter_without_its_range_is_left_out(tmp_path: Path) -> None:
    root = laptop(tmp_path)
    (root / "sys/class/powercap/intel-rapl:0/max_energy_range_uj").unlink()
    clock = Clock(1.0)
    source = SysfsSource(root, clock=clock)
    source.read()
    clock.t = 2.0
    assert source.read().power_mw is None


def test_a_box_with_nothing_is_unavailable(tmp_path: Path) -> None:
    (tmp_path / "sys").mkdir()
    with pytest.raises(SensorUnavailable, match="no thermal zone, power rail, battery or RAPL"):
        SysfsSource(tmp_path)
    with pytest.raises(SensorUnavailable, match="does not exist"):
        SysfsSource(tmp_path / "nowhere")


@pytest.mark.parametrize("gone, message", [
    ("sys/bus/i2c/devices/1-0040/hwmon/hwmon1/in1_input", "INA3221 rail"),
    ("sys/class/thermal/thermal_zone1/type", "thermal_zone1 vanished"),
])
def test_a_sensor_that_vanishes_is_reported(tmp_path: Path, gone: str, message: str) -> None:
    root = orin_nano(tmp_path)
    source = SysfsSource(root)
    source.read()
    (root / gone).unlink()
    with pytest.raises(SensorError, match=message):
        source.read()


def test_a_battery_that_vanishes_is_reported(tmp_path: Path) -> None:
    root = laptop(tmp_path)
    source = SysfsSource(root)
    (root / "sys/class/power_supply/BAT0/capacity").unlink()
    with pytest.raises(SensorError, match="battery BAT0"):
        source.read()


# --- fallback ------------------------------------------------------------------------------------

def test_without_jtop_the_chain_falls_back_to_sysfs_and_says_why(tmp_path: Path) -> None:
    root = orin_nano(tmp_path)
    source, skipped = open_first([JtopSource, lambda: SysfsSource(root)])
    assert isinstance(source, SysfsSource)
    assert len(skipped) == 1 and skipped[0].startswith("jtop: ")


def test_when_no_source_works_every_reason_is_listed(tmp_path: Path) -> None:
    with pytest.raises(SensorUnavailable) as info:
        open_first([JtopSource, lambda: SysfsSource(tmp_path / "none")])
    assert "jtop: " in str(info.value) and "sysfs: " in str(info.value)


def test_jtop_on_a_real_jetson_reads_temperatures_and_power() -> None:
    try:
        source = JtopSource()
    except SensorUnavailable as exc:
        pytest.skip(f"needs a Jetson with the jtop service: {exc}")
    reading = source.read()
    source.close()
    assert reading.temperatures and reading.power_mw is not None


# --- replay ----------------------------------------------------------------------------------------

def test_replay_returns_the_last_row_at_or_before_the_clock_and_goes_stale_after_the_end(tmp_path: Path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("time,temp.tj,trip.tj.passive,power_mw,battery_percent,charging,nvpmodel\n"
                     "0,40.5,80,5000,90,false,15W\n1,41.0,80,,89.5,,15W\n3,60,80,7000,,true,7W\n")
    clock = Clock(-1.0)
    source = ReplaySource(trace, clock=clock)
    with pytest.raises(SensorError, match="no reading at or before"):
        source.read()
    clock.t = 0.5
    first = source.read()
    assert first.temperatures == {"tj": 40.5} and first.trip_points == {"tj": {"passive": 80.0}}
    assert first.power_mw == 5000.0 and first.battery_percent == 90.0 and first.charging is False
    clock.t = 2.9
    second = source.read()
    assert second.time == 1.0 and second.power_mw is None and "power" in second.missing and second.charging is None
    clock.t = 50.0
    assert source.read().time == 3.0  # the trace has ended: its last row, growing old


def test_json_lines_and_csv_round_trip(tmp_path: Path) -> None:
    readings = [
        Reading(0.0, "x", {"cpu": 50.0}, {"cpu": {"passive": 85.0}}, 4000.0, {"VDD_IN": 4000.0}, 80.0, False, "15W"),
        Reading(1.5, "x", {"cpu": 51.0}, {}, None, {}, None, None, None),
    ]
    write_trace(tmp_path / "t.csv", readings)
    (tmp_path / "t.jsonl").write_text("\n".join(json.dumps({k: v for k, v in row.items() if v is not None}) for row in (
        {"time": 0.0, "temp.cpu": 50.0, "trip.cpu.passive": 85.0, "power_mw": 4000.0, "rail.VDD_IN": 4000.0,
         "battery_percent": 80.0, "charging": False, "nvpmodel": "15W"},
        {"time": 1.5, "temp.cpu": 51.0},
    )))
    for name in ("t.csv", "t.jsonl"):
        loaded = load_trace(tmp_path / name)
        assert [(r.time, r.temperatures, r.trip_points, r.power_mw, r.rails_mw, r.battery_percent, r.charging, r.nvpmodel) for r in loaded] == \
            [(r.time, r.temperatures, r.trip_points, r.power_mw, r.rails_mw, r.battery_percent, r.charging, r.nvpmodel) for r in readings]


@pytest.mark.parametrize("text, message", [
    ("time,temp.tj\n0,40\n0,41\n", "times must increase"),
    ("time,temp.tj\n0,hot\n", r"t.csv:2: malformed value"),
    ("temp.tj\n40\n", r"t.csv:2: a trace row needs a 'time'"),
    ("time,temp.tj\n", "no rows"),
])
def test_a_malformed_trace_says_where(tmp_path: Path, text: str, message: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(InputError, match=message):
        load_trace(tmp_path / "t.csv")


def test_a_missing_trace_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(SensorUnavailable, match="not found"):
        ReplaySource(tmp_path / "none.csv")


def test_the_shipped_traces_load() -> None:
    root = Path(__file__).resolve().parents[1] / "traces"
    thermal, battery = load_trace(root / "thermal_ramp.csv"), load_trace(root / "battery_discharge.csv")
    assert max(r.max_temperature for r in thermal) > 95 > thermal[0].max_temperature  # type: ignore[operator]
    assert battery[0].battery_percent == 100.0 and battery[-1].battery_percent == pytest.approx(5.0)


def test_zones_are_named_as_jtop_names_them_so_their_trip_points_match(tmp_path: Path) -> None:
    thermal_zone(tmp_path, 0, "CPU_therm", 45000, {"passive": 90000})  # no '-': jtop cuts at '_'
    thermal_zone(tmp_path, 1, "tj-thermal", 47000, {"hot": 99000})
    reading = SysfsSource(tmp_path).read()
    assert reading.temperatures == {"CPU": 45.0, "tj": 47.0}
    assert reading.trip_points == {"CPU": {"passive": 90.0}, "tj": {"hot": 99.0}}


# --- jtop: the real jetson-stats client's API, its service stood in for ----------------------------

class ServiceClient:
    """Stands in for a `jtop.jtop` client connected to the jtop service (which needs a
    Jetson): the same methods and properties, checked against the real class below. Samples
    arrive when the test says, as the service's broadcasts would."""

    board_seconds = 100

    def __init__(self, interval=1.0) -> None:  # noqa: ANN001 - jtop's own signature
        self.interval = interval
        self._observers: list = []
        self._running = False
        self.temperature = {"cpu": {"temp": 50.5, "online": True}, "tj": {"temp": 52.0, "online": True}}
        self.power = {"rail": {"VDD_CPU_GPU_CV": {"power": 2500, "online": True}}, "tot": {"power": 7000}}
        self.nvpmodel = "15W"
        self.uptime = datetime.timedelta(0)  # the service's stamp of its latest sample

    def attach(self, observer) -> None:  # noqa: ANN001 - jtop's own signature
        self._observers.append(observer)

    def start(self) -> None:
        self._running = True
        self.sample()  # jtop's start() waits for the first sample

    def sample(self, new: bool = True) -> None:
        """A broadcast; `new=False` re-delivers the last one (what jtop does when its service stalls)."""
        if new:
            ServiceClient.board_seconds += 1  # one board, whichever client hears it
            self.uptime = datetime.timedelta(seconds=ServiceClient.board_seconds)
        for observer in self._observers:
            observer(self)

    def ok(self, spin=False) -> bool:  # noqa: ANN001
        return self._running

    def close(self) -> None:
        self._running = False

    @property
    def stats(self) -> dict:
        raise KeyError("EMC")  # jtop.stats rebuilds CPU, memory, GPU and fan figures: any may lack a key


def test_the_stand_in_has_the_real_jtop_clients_api() -> None:
    """jetson-stats 7.2.2's own client class: the methods JtopSource calls take the same
    parameters as the stand-in's, and what it reads are properties there too."""
    import inspect

    from tests.api_conformance import jtop_client_api

    methods, properties = ["attach", "start", "ok", "close", "__init__"], ["temperature", "power", "nvpmodel", "uptime", "stats"]
    real = jtop_client_api(methods + properties)
    for name in methods:
        stand_in = [[p.name, repr(p.default)] for p in inspect.signature(getattr(ServiceClient, name)).parameters.values()]
        assert real[name] == {"kind": "method", "params": stand_in}, name
    assert all(real[name]["kind"] == "property" for name in properties)


def jtop_source(tmp_path: Path, clock: Clock, clients: list[ServiceClient]) -> JtopSource:
    def connect(interval: float) -> ServiceClient:
        clients.append(ServiceClient(interval))
        return clients[-1]

    thermal_zone(tmp_path, 0, "tj-thermal", 52000, {"hot": 99000})
    return JtopSource(clock=clock, sysfs_root=str(tmp_path), client_factory=connect)


def test_a_jtop_reading_is_dated_by_when_the_service_sampled_it(tmp_path: Path) -> None:
    clock, clients = Clock(10.0), []
    source = jtop_source(tmp_path, clock, clients)
    clock.t = 25.0  # no sample since t=10: the governor must see a 15 s old reading
    reading = source.read()
    assert reading.time == 10.0 and reading.temperatures == {"cpu": 50.5, "tj": 52.0}
    assert reading.trip_points == {"tj": {"hot": 99.0}} and reading.power_mw == 7000.0 and reading.nvpmodel == "15W"
    clients[0].sample(new=False)  # a stalled service: the same sample again
    assert source.read().time == 10.0
    clients[0].sample()
    assert source.read().time == 25.0


def test_a_jtop_reading_does_not_depend_on_unrelated_figures(tmp_path: Path) -> None:
    source = jtop_source(tmp_path, Clock(), [])
    assert source.read().rails_mw == {"VDD_CPU_GPU_CV": 2500.0}  # jtop.stats would have raised KeyError('EMC')


def test_a_stopped_jtop_client_is_replaced_by_a_new_connection(tmp_path: Path) -> None:
    clock, clients = Clock(10.0), []
    source = jtop_source(tmp_path, clock, clients)
    clients[0]._running = False  # what jtop's ok() does after one sample comes late
    clock.t = 12.0
    reading = source.read()
    assert len(clients) == 2 and not clients[0].ok() and reading.time == 12.0  # the new client's first sample
