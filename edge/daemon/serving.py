"""The serving core: models, a bounded queue with dynamic batching, and the governor loop.

One worker thread per model takes the oldest request, adds whatever else is already
waiting for the same operating point (up to max_batch rows, waiting at most max_delay
for more), and runs them as one batch; the runtime's own thread pool does the math.
A full queue refuses at once (the HTTP layer answers 503), and a request that waited
past its timeout is answered with an error instead of being run late.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.daemon.metrics import Registry
from edge.errors import EdgeError, InputError, ManifestError, UserError
from edge.frontier import most_accurate_within
from edge.governor import Governor, Policy, ladder, load_policy
from edge.manifest import MANIFEST_NAME
from edge.runtime import InferenceResult, Runtime
from edge.sensors import Reading, SensorError, SensorSource

log = logging.getLogger(__name__)


class Overloaded(EdgeError):
    """The request queue is full."""


class RequestTimeout(EdgeError):
    """A request waited longer than its timeout."""


class ModelUnavailable(EdgeError):
    """The model's engines did not load; the reason says why."""


class ReloadRefused(UserError):
    """The engines on disk do not load: the loaded ones keep serving (the reason says why)."""


@dataclass(frozen=True)
class Answer:
    """One request's rows of a batch's result."""

    probabilities: np.ndarray
    predictions: np.ndarray
    exits: np.ndarray
    operating_point: str
    engine_s: float  # the batch's time in the runtime: the rest of a request's time is the server's

    @classmethod
    def rows(cls, result: InferenceResult, start: int, end: int) -> Answer:
        return cls(result.probabilities[start:end], result.predictions[start:end], result.exits[start:end], result.operating_point, result.total_ms / 1e3)


@dataclass
class Job:
    images: np.ndarray
    point: str | None
    deadline: float
    client: str = ""
    on_finish: Callable[[Job], None] | None = None  # the model's bookkeeping: runs before any waiter wakes
    done: threading.Event = field(default_factory=threading.Event)
    result: Answer | None = None
    error: Exception | None = None
    _callbacks: list[Callable[[], object]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def finish(self, result: Answer | None = None, error: Exception | None = None) -> None:
        self.result, self.error = result, error
        if self.on_finish is not None:
            self.on_finish(self)
        with self._lock:
            self.done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # a waiter gone (its event loop closed): the batcher goes on
                log.warning("a request's completion callback failed", exc_info=True)

    def when_done(self, callback: Callable[[], object]) -> None:
        """Call `callback` (from the batcher's thread) once answered; at once if it is."""
        with self._lock:
            if not self.done.is_set():
                self._callbacks.append(callback)
                return
        callback()

    def seconds_left(self) -> float:
        """How long a caller waits for the answer: the deadline, and a little for the batch running."""
        return max(0.0, self.deadline - time.monotonic()) + 0.5

    def wait(self) -> Answer:
        """The answer, or the error the batcher met; RequestTimeout past the deadline."""
        if not self.done.wait(self.seconds_left()):
            raise RequestTimeout("no answer before the request's timeout")
        if self.error is not None:
            raise self.error
        assert self.result is not None
        return self.result


class Model:
    """One manifest served: its runtime (or why it is not there) and its batcher."""

    def __init__(
        self, name: str, folder: Path, backend: str, metrics: Registry, max_batch: int, max_delay_s: float, queue_size: int,
        client_share: int | None = None,
    ) -> None:
        self.name, self.folder, self.backend, self.metrics = name, folder, backend, metrics
        self.runtime: Runtime | None = None
        self.reason = ""
        try:
            self.runtime = Runtime(folder, backend)
        except EdgeError as exc:  # a missing or corrupt engine: the daemon stays up, the model is not ready
            self.reason = str(exc)
            log.error("model %s not ready: %s", name, exc)
        metrics.model_ready.labels(model=name).set(1.0 if self.runtime else 0.0)
        self._max_batch_asked = max_batch
        self.max_batch = self._batch_limit(self.runtime)
        self.max_delay_s = max_delay_s
        self._gate = threading.Lock()  # submit's check-and-put against stop's flag-and-sentinel
        self._engines = threading.Lock()  # a batch running against a reload swapping the runtime
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=queue_size)
        self.client_share = client_share or queue_size  # requests one client (connection) may have waiting
        self._waiting: dict[str, int] = {}
        self._worker = threading.Thread(target=self._serve, name=f"batcher-{name}", daemon=True)
        self._stopping = False
        self.runtime_failed = False
        if self.runtime is not None:
            self._worker.start()

    def _batch_limit(self, runtime: Runtime | None) -> int:
        """The engines' batch limit binds batching too."""
        engine_max = runtime.manifest.batch.get("max", 0) if runtime else 0
        return min(self._max_batch_asked, engine_max) if engine_max else self._max_batch_asked

    @property
    def ready(self) -> bool:
        return self.runtime is not None and not self._stopping and not self.runtime_failed

    def _serving(self) -> Runtime:
        if self.runtime is None or self.runtime_failed:
            raise ModelUnavailable(f"model {self.name!r} is not ready: {self.reason}")
        return self.runtime

    @property
    def input_name(self) -> str:
        return self._serving().manifest.input.name

    def metadata(self) -> dict[str, Any]:
        """The model's description in the protocol's terms (inputs, outputs, points)."""
        doc: dict[str, Any] = {"name": self.name, "versions": ["1"], "platform": "edge-segment-chain"}
        if self.runtime is None:
            return doc | {"ready": False, "reason": self.reason}
        manifest = self.runtime.manifest
        classes = len(manifest.classes)
        doc["inputs"] = [{"name": manifest.input.name, "datatype": "FP32", "shape": [-1, *manifest.input.shape[1:]]}]
        doc["outputs"] = [
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, classes]},
            {"name": "prediction", "datatype": "INT64", "shape": [-1]},
            {"name": "exit", "datatype": "INT64", "shape": [-1]},
        ]
        doc["parameters"] = {
            "classes": manifest.classes, "operating_point": self.runtime.operating_point,
            "operating_points": [p.name for p in manifest.operating_points], "max_batch": manifest.batch.get("max"),
        }
        return doc

    def point_within_budget(self, budget_ms: float) -> str:
        """The most accurate operating point whose measured mean latency fits the budget."""
        measured = [p for p in self._serving().manifest.operating_points if "mean_ms" in p.measured]
        if not measured:
            raise InputError(f"model {self.name!r}: no operating point has a measured latency, so a latency budget cannot be honoured")
        best = most_accurate_within(measured, budget_ms, lambda p: p.measured["mean_ms"], lambda p: p.measured.get("accuracy"))
        if best is None:
            fastest = min(measured, key=lambda p: p.measured["mean_ms"])
            raise InputError(f"no operating point fits {budget_ms:g} ms; the fastest, {fastest.name!r}, measured {fastest.measured['mean_ms']:.3f} ms")
        return best.name

    def images_of(self, inputs: dict[str, np.ndarray]) -> np.ndarray:
        """The one input this model takes, checked against its engines."""
        expected = self.input_name
        if set(inputs) != {expected}:
            raise InputError(f"model {self.name!r} takes one input named {expected!r}, got {sorted(inputs)}")
        images = inputs[expected]
        if images.dtype != np.float32:
            raise InputError(f"input {expected!r} must be FP32, got {images.dtype}")
        images = np.ascontiguousarray(images)
        self._serving().check_input(images)
        return images

    def submit(
        self, inputs: dict[str, np.ndarray], timeout_s: float, point: str | None = None, budget_ms: float | None = None, client: str = "",
    ) -> Job:
        """Check a request (its input, its point, or the point for its budget) and queue
        it; everything a caller can get wrong fails here, before the queue."""
        runtime = self._serving()
        images = self.images_of(inputs)
        if budget_ms is not None:
            point = self.point_within_budget(budget_ms)
        elif point is not None:
            try:
                runtime.manifest.point(point)  # unknown names fail here, before queueing
            except ManifestError as exc:  # a request's point name is the caller's input
                raise InputError(str(exc)) from None
        job = Job(images, point, time.monotonic() + timeout_s, client, self._answered)
        with self._gate:
            if self._stopping:
                raise ModelUnavailable(f"model {self.name!r} is shutting down")
            if self._waiting.get(client, 0) >= self.client_share:  # one client cannot fill the queue for all
                self.metrics.refusals.labels(model=self.name).inc()
                raise Overloaded(f"model {self.name!r}: this client already has {self.client_share} requests waiting")
            try:
                self._queue.put_nowait(job)
            except queue.Full:
                self.metrics.refusals.labels(model=self.name).inc()
                raise Overloaded(f"model {self.name!r}: {self._queue.maxsize} requests already waiting") from None
            self._waiting[client] = self._waiting.get(client, 0) + 1
        self.metrics.queue_depth.labels(model=self.name).set(self._queue.qsize())
        return job

    def _answered(self, job: Job) -> None:
        with self._gate:
            left = self._waiting.get(job.client, 1) - 1
            if left > 0:
                self._waiting[job.client] = left
            else:
                self._waiting.pop(job.client, None)

    def reload(self, required_points: Sequence[str] = ()) -> None:
        """Load the engines from disk again and swap them in between batches; if they do
        not load (a file deleted or corrupt), the loaded ones keep serving."""
        try:
            fresh = Runtime(self.folder, self.backend)
        except EdgeError as exc:
            raise ReloadRefused(f"model {self.name!r} not reloaded, still serving the engines loaded before: {exc}") from None
        missing = [p for p in required_points if p not in fresh.runnable_points()]
        if missing:
            fresh.close()
            raise ReloadRefused(f"model {self.name!r} not reloaded: the engines on disk lack operating points {missing} the governor uses")
        with self._engines:
            old, self.runtime = self.runtime, fresh
            if old is not None and old.operating_point in fresh.runnable_points():
                fresh.set_operating_point(old.operating_point)
            self.max_batch = self._batch_limit(fresh)
            self.reason, self.runtime_failed = "", False
        if old is not None:
            old.close()
        with self._gate:
            if not self._worker.is_alive() and not self._stopping:  # engines missing at start, or the batcher failed
                self._worker = threading.Thread(target=self._serve, name=f"batcher-{self.name}", daemon=True)
                self._worker.start()
        self.metrics.model_ready.labels(model=self.name).set(1.0)
        log.info("model %s reloaded from %s", self.name, self.folder)

    def _serve(self) -> None:
        try:
            self._batches()
        except Exception:  # never die silently with requests waiting
            log.exception("model %s: batcher failed", self.name)
            self.reason = "its batcher failed (see the log)"
            self.runtime_failed = True
        finally:
            self._fail_leftovers()

    def _fail_leftovers(self) -> None:
        """Whatever is still queued when the worker ends gets an answer, not a timeout."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.finish(error=ModelUnavailable(f"model {self.name!r} stopped before this request ran"))

    def _batches(self) -> None:
        held: Job | None = None
        stopping = False
        while True:
            if held is not None:
                job, held = held, None
            elif stopping:
                return
            else:
                got = self._queue.get()
                if got is None:
                    return
                job = got
            batch, rows = [job], len(job.images)
            until = time.monotonic() + self.max_delay_s
            while rows < self.max_batch:
                try:
                    wait = until - time.monotonic()
                    nxt = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:  # stop once what was queued before it is answered
                    stopping = True
                    break
                if nxt.point != job.point or rows + len(nxt.images) > self.max_batch:
                    held = nxt  # runs next, with its own kind
                    break
                batch.append(nxt)
                rows += len(nxt.images)
            self.metrics.queue_depth.labels(model=self.name).set(self._queue.qsize())
            self._run(batch)

    def _run(self, batch: list[Job]) -> None:
        now = time.monotonic()
        live = []
        for job in batch:
            if now > job.deadline:
                job.finish(error=RequestTimeout(f"waited {now - job.deadline:.3f} s past its timeout in the queue"))
            else:
                live.append(job)
        if not live:
            return
        try:
            images = live[0].images if len(live) == 1 else np.concatenate([j.images for j in live])
            with self._engines:
                assert self.runtime is not None
                result = self.runtime.infer(images, point_name=live[0].point)
        except Exception as exc:  # an engine failing mid-run: every job in the batch gets the error
            log.exception("model %s: batch of %d failed", self.name, len(live))
            for job in live:
                job.finish(error=exc)
            return
        self.metrics.batch_size.observe(len(images))
        start = 0
        for job in live:
            end = start + len(job.images)
            job.finish(Answer.rows(result, start, end))
            start = end
        for k, count in enumerate(np.bincount(result.exits, minlength=self.runtime.num_exits)):
            if count:
                self.metrics.exits.labels(exit=str(k), model=self.name).inc(float(count))

    def stop(self, drain_timeout_s: float = 30.0) -> None:
        """Refuse new requests, finish the queued ones, then close the engines."""
        with self._gate:
            self._stopping = True
            if self._worker.is_alive():
                self._queue.put(None)  # behind every accepted request: they are answered first
        if self._worker.is_alive():
            self._worker.join(drain_timeout_s)
        if self.runtime is not None:
            self.runtime.close()


class RepositoryError(UserError):
    """The model repository is missing or holds no model: edged cannot start."""


def find_models(repository: Path) -> dict[str, Path]:
    """A manifest folder is one model named after the folder; else every subfolder with a
    manifest. A repository that does not exist or holds no manifest is an error: a
    daemon serving nothing would only answer 503 forever."""
    if not repository.is_dir():
        raise RepositoryError(f"model repository {repository} {'is not a folder' if repository.exists() else 'does not exist'}")
    if (repository / MANIFEST_NAME).is_file():
        return {repository.resolve().name: repository}
    models = {p.name: p for p in sorted(repository.iterdir()) if (p / MANIFEST_NAME).is_file()}
    if not models:
        raise RepositoryError(f"model repository {repository} holds no model: no {MANIFEST_NAME} in it or in any folder directly under it")
    return models


class GovernorLoop:
    """Ticks the governor on its own thread from a sensor source; publishes readings and
    decisions to the metrics. Latency feedback: the mean request latency since the last tick."""

    def __init__(self, model: Model, source: SensorSource, policy: Policy, tick_s: float, metrics: Registry) -> None:
        assert model.runtime is not None
        self.model, self.source, self.tick_s, self.metrics = model, source, tick_s, metrics
        runtime = model.runtime
        self.governor = Governor(ladder(runtime.manifest, names=policy.points, runnable=runtime.runnable_points()), policy, self._apply)
        self._stop = threading.Event()
        self._latencies: list[float] = []
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._loop, name="governor", daemon=True)

    def _apply(self, point: str) -> None:
        assert self.model.runtime is not None
        self.model.runtime.set_operating_point(point)
        self.metrics.operating_point.replace([({"model": self.model.name, "point": point}, 1.0)], model=self.model.name)

    @property
    def points(self) -> list[str]:
        """The operating points the governor switches between."""
        return [r.point for r in self.governor.rungs]

    def record_latency(self, seconds: float) -> None:
        with self._lock:
            self._latencies.append(seconds * 1e3)

    def start(self) -> None:
        self._thread.start()

    def tick(self) -> None:
        now = time.monotonic()
        reading: Reading | None = None
        error = None
        try:
            reading = self.source.read()
        except SensorError as exc:
            error = str(exc)
        with self._lock:
            latency = float(np.mean(self._latencies)) if self._latencies else None
            self._latencies = []
        decision = self.governor.tick(now, reading, latency, error)
        if decision.switched:
            self.metrics.switches.labels(forced=str(decision.forced).lower(), model=self.model.name).inc()
            log.info("operating point -> %s (%s)", decision.point, decision.reason)
        self.metrics.sensor_up.labels(source=self.source.name).set(1.0 if decision.sensor_ok else 0.0)
        zones = reading.temperatures if decision.sensor_ok and reading is not None else {}
        self.metrics.temperature.replace([({"zone": z}, t) for z, t in zones.items()])
        if reading is not None:
            if reading.power_mw is not None:
                self.metrics.power.set(reading.power_mw)
            if reading.battery_percent is not None:
                self.metrics.battery.set(reading.battery_percent)

    def _loop(self) -> None:
        while not self._stop.wait(self.tick_s):
            try:
                self.tick()
            except Exception:  # the loop must outlive any one bad tick
                log.exception("governor tick failed")

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(self.tick_s * 2 + 1)
        self.source.close()

    def state(self) -> dict[str, Any]:
        return self.governor.state() | {"source": self.source.name}


def open_sensors(spec: str, sysfs_root: str, clock: Callable[[], float] = time.monotonic) -> SensorSource | None:
    """The config's `sensors`: auto (jtop, else sysfs), sysfs, replay:<trace>, or none."""
    from edge.sensors import open_first
    from edge.sensors.jtop_source import JtopSource
    from edge.sensors.replay import ReplaySource
    from edge.sensors.sysfs import SysfsSource

    if spec == "none":
        return None
    if spec.startswith("replay:"):
        return ReplaySource(spec.split(":", 1)[1])  # wall time from the first read
    if spec == "sysfs":
        return SysfsSource(sysfs_root, clock)
    source, skipped = open_first([JtopSource, lambda: SysfsSource(sysfs_root, clock)])
    for reason in skipped:
        log.warning("sensor source skipped: %s", reason)
    return source


def policy_of(path: str) -> Policy:
    return load_policy(path) if path else Policy()

