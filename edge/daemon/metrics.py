"""The daemon's Prometheus metrics, through prometheus-client, one registry per daemon
(tests run several in one process). Series that come and go as a whole (a board's
temperature zones, a model's operating point) are replaced together."""

from __future__ import annotations

import threading
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4

LATENCY_BUCKETS_S = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
OVERHEAD_BUCKETS_S = (0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1)
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4

disable_created_metrics()  # the *_created series say when the process started: noise for a dashboard


class SeriesGauge:
    """A labelled gauge whose series are replaced as a set: those not given again vanish."""

    def __init__(self, name: str, help_text: str, labels: tuple[str, ...], registry: CollectorRegistry) -> None:
        self.gauge = Gauge(name, help_text, labels, registry=registry)
        self._labels = labels
        self._live: set[tuple[str, ...]] = set()
        self._lock = threading.Lock()

    def replace(self, values: Iterable[tuple[dict[str, str], float]], **within: str) -> None:
        """All series at once, or only those carrying the `within` labels (one model's)."""
        fresh = {tuple(labels[k] for k in self._labels): float(v) for labels, v in values}
        scope = [self._labels.index(k) for k in within]
        wanted = tuple(within.values())
        with self._lock:
            for key in self._live - set(fresh):
                if tuple(key[i] for i in scope) == wanted:
                    self.gauge.remove(*key)
                    self._live.discard(key)
            for key, value in fresh.items():
                self.gauge.labels(*key).set(value)
                self._live.add(key)


class Registry:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("edge_requests_total", "Inference requests answered, by model and HTTP status code.", ("code", "model"), registry=r)
        self.errors = Counter("edge_request_errors_total", "Requests that failed, by kind.", ("kind",), registry=r)
        self.refusals = Counter("edge_refusals_total", "Requests refused because the queue was full.", ("model",), registry=r)
        self.latency = Histogram("edge_request_latency_seconds", "Time from request received to response ready.", buckets=LATENCY_BUCKETS_S, registry=r)
        self.overhead = Histogram("edge_request_overhead_seconds", "Of a request's time, what was not its batch's time in the engines: parsing, queueing, copying, encoding.",
                                  buckets=OVERHEAD_BUCKETS_S, registry=r)
        self.input_time = Histogram("edge_request_input_seconds", "From a request's arrival to its tensors in hand: reading, parsing, copying out of shared memory.",
                                    buckets=OVERHEAD_BUCKETS_S, registry=r)
        self.refusal_time = Histogram("edge_refusal_seconds", "From an overloaded request's arrival to its refusal (503, or UNAVAILABLE over gRPC).",
                                      buckets=OVERHEAD_BUCKETS_S, registry=r)
        self.exits = Counter("edge_exits_total", "Samples answered at each exit.", ("exit", "model"), registry=r)
        self.queue_depth = Gauge("edge_queue_depth", "Requests waiting to be batched.", ("model",), registry=r)
        self.batch_size = Histogram("edge_batch_size", "Rows per engine call.", buckets=(1, 2, 4, 8, 16, 32, 64), registry=r)
        self.operating_point = SeriesGauge("edge_operating_point", "1 for the operating point in use.", ("model", "point"), r)
        self.switches = Counter("edge_governor_switches_total", "Operating-point switches, by whether a limit forced them.", ("forced", "model"), registry=r)
        self.temperature = SeriesGauge("edge_sensor_temperature_celsius", "Temperature per zone.", ("zone",), r)
        self.power = Gauge("edge_sensor_power_milliwatts", "Total power.", registry=r)
        self.battery = Gauge("edge_sensor_battery_percent", "Battery charge.", registry=r)
        self.sensor_up = Gauge("edge_sensor_up", "1 while the sensor source answers with fresh readings.", ("source",), registry=r)
        self.model_ready = Gauge("edge_model_ready", "1 when the model's engines are loaded.", ("model",), registry=r)

    def render(self) -> bytes:
        return generate_latest(self.registry)
