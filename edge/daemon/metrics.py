"""Prometheus text exposition (format 0.0.4) with counters, gauges and histograms.
Small on purpose: the daemon needs a handful of series, thread-safe, no dependency."""

from __future__ import annotations

import bisect
import threading
from typing import Iterable

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


def _number(value: float) -> str:
    """Prometheus sample values: exact integers stay integers; no 6-digit rounding."""
    if value != value:
        return "NaN"
    if value in (float("inf"), float("-inf")):
        return "+Inf" if value > 0 else "-Inf"
    return str(int(value)) if float(value).is_integer() and abs(value) < 2**53 else repr(float(value))


def _escape(value: str) -> str:
    """Prometheus label-value escaping: backslash, double quote, newline."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escaped = (f'{k}="{_escape(str(v))}"' for k, v in sorted(labels.items()))
    return "{" + ",".join(escaped) + "}"


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str) -> None:
        self.name, self.help = name, help_text
        self._lock = threading.Lock()

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    kind = "counter"

    def __init__(self, name: str, help_text: str) -> None:
        super().__init__(name, help_text)
        self._values: dict[tuple[tuple[str, str], ...], float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def lines(self) -> list[str]:
        with self._lock:
            return self.header() + [f"{self.name}{_labels(dict(k))} {_number(v)}" for k, v in self._values.items()]


class Gauge(Counter):
    kind = "gauge"

    def set(self, value: float, **labels: str) -> None:
        with self._lock:
            self._values[tuple(sorted(labels.items()))] = float(value)

    def replace(self, values: Iterable[tuple[dict[str, str], float]], **within: str) -> None:
        """All series at once (e.g. one per temperature zone; vanished zones disappear),
        or only those carrying the `within` labels (e.g. one model's)."""
        scope = set(within.items())
        with self._lock:
            kept = {k: v for k, v in self._values.items() if scope and not scope <= set(k)}
            self._values = kept | {tuple(sorted(labels.items())): float(v) for labels, v in values}


class Histogram(_Metric):
    kind = "histogram"

    def __init__(self, name: str, help_text: str, buckets: tuple[float, ...] = LATENCY_BUCKETS_S) -> None:
        super().__init__(name, help_text)
        self.buckets = buckets
        self._counts = [0] * (len(buckets) + 1)
        self._sum, self._count = 0.0, 0

    def observe(self, value: float) -> None:
        with self._lock:
            self._counts[bisect.bisect_left(self.buckets, value)] += 1
            self._sum += value
            self._count += 1

    def lines(self) -> list[str]:
        with self._lock:
            out, cumulative = self.header(), 0
            for bound, count in zip(self.buckets, self._counts):
                cumulative += count
                out.append(f'{self.name}_bucket{{le="{bound:g}"}} {cumulative}')
            out.append(f'{self.name}_bucket{{le="+Inf"}} {self._count}')
            out += [f"{self.name}_sum {_number(self._sum)}", f"{self.name}_count {self._count}"]
            return out


class Registry:
    def __init__(self) -> None:
        self.requests = Counter("edge_requests_total", "Inference requests answered, by model and HTTP status code.")
        self.errors = Counter("edge_request_errors_total", "Requests that failed, by kind.")
        self.refusals = Counter("edge_refusals_total", "Requests refused because the queue was full.")
        self.latency = Histogram("edge_request_latency_seconds", "Time from request received to response ready.")
        self.exits = Counter("edge_exits_total", "Samples answered at each exit.")
        self.queue_depth = Gauge("edge_queue_depth", "Requests waiting to be batched.")
        self.batch_size = Histogram("edge_batch_size", "Rows per engine call.", (1, 2, 4, 8, 16, 32, 64))
        self.operating_point = Gauge("edge_operating_point", "1 for the operating point in use.")
        self.switches = Counter("edge_governor_switches_total", "Operating-point switches, by whether a limit forced them.")
        self.temperature = Gauge("edge_sensor_temperature_celsius", "Temperature per zone.")
        self.power = Gauge("edge_sensor_power_milliwatts", "Total power.")
        self.battery = Gauge("edge_sensor_battery_percent", "Battery charge.")
        self.sensor_up = Gauge("edge_sensor_up", "1 while the sensor source answers with fresh readings.")
        self.model_ready = Gauge("edge_model_ready", "1 when the model's engines are loaded.")

    def render(self) -> str:
        lines: list[str] = []
        for metric in vars(self).values():
            lines += metric.lines()
        return "\n".join(lines) + "\n"
