"""What every front end (HTTP, gRPC) serves: one inference request from its parsed form
to its outputs, the shared-memory regions, model reloads, and what each failure answers.

Statuses are HTTP's numbers; the gRPC side maps them to its codes (grpc_server.py).
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from pathlib import Path
from typing import Any

import numpy as np

from edge.daemon.config import DaemonConfig
from edge.daemon.metrics import Registry
from edge.daemon.protocol import InferRequest, ProtocolError
from edge.daemon.serving import Answer, GovernorLoop, Job, Model, ModelUnavailable, Overloaded, RequestTimeout
from edge.daemon.shm import RegionRef, SharedMemoryRegistry, UnknownRegion
from edge.errors import InputError, UserError

SERVER_NAME, SERVER_VERSION = "edged", "0.1.0"
EXTENSIONS = ["binary_tensor_data", "system_shared_memory", "model_repository"]


@dataclass
class Reply:
    """A request's answer, ready for either front end to encode."""

    outputs: dict[str, np.ndarray]
    parameters: dict[str, Any]  # operating_point, exits
    shared: dict[str, RegionRef]  # outputs already written to shared memory
    engine_s: float  # of the request's time, what the runtime took for its batch
    input_s: float  # from its arrival to its tensors in hand: read, parsed, copied out of shared memory


@dataclass
class Pending:
    """A request queued: its answer comes through `job`."""

    request: InferRequest
    job: Job
    input_s: float


class App:
    """The models, the governor loops, the shared-memory regions, metrics and config."""

    def __init__(self, config: DaemonConfig, models: dict[str, Model], governors: dict[str, GovernorLoop], metrics: Registry) -> None:
        self.config, self.models, self.governors, self.metrics = config, models, governors, metrics
        self.token = config.token()
        self.shm = SharedMemoryRegistry(Path(config.shm_dir))
        self._inflight = 0
        self._idle = threading.Condition()

    def begin(self) -> None:
        with self._idle:
            self._inflight += 1

    def end(self) -> None:
        with self._idle:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.notify_all()

    def wait_idle(self, timeout_s: float) -> bool:
        """Until every request being handled has been answered (shutdown)."""
        with self._idle:
            return self._idle.wait_for(lambda: self._inflight == 0, timeout_s)

    def ready(self) -> bool:
        return bool(self.models) and all(m.ready for m in self.models.values())

    def model(self, name: str, version: str | None) -> Model:
        model = self.models.get(name)
        if model is None:
            raise UnknownModel(f"unknown model {name!r}; served: {sorted(self.models)}")
        if version not in (None, "", "1"):
            raise UnknownModel(f"model {name!r} has only version 1")
        return model

    def submit(self, model: Model, request: InferRequest, client: str, arrived: float) -> Pending:
        """Queue one request (`arrived`: its perf_counter at arrival), its shared-memory
        inputs read first; everything a caller can get wrong fails here."""
        inputs = dict(request.inputs)
        for name, spec in request.shm_inputs.items():
            inputs[name] = self.shm.read(spec.ref, spec.dtype, spec.shape, f"input {name!r}")
        input_s = time.perf_counter() - arrived
        timeout = min(self.config.request_timeout_s, request.timeout_s or math.inf)
        job = model.submit(inputs, timeout, request.operating_point, request.latency_budget_ms, client)
        return Pending(request, job, input_s)

    def reply(self, pending: Pending) -> Reply:
        """The answer (waiting for it if need be): outputs picked and, where asked, written
        to shared memory."""
        answer = pending.job.wait()
        request = pending.request
        outputs = select_outputs(answer, request.outputs)
        for name, ref in request.shm_outputs.items():
            self.shm.write(ref, outputs[name], f"output {name!r}")
        parameters = {"operating_point": answer.operating_point, "exits": ",".join(map(str, answer.exits.tolist()))}
        return Reply(outputs, parameters, request.shm_outputs, answer.engine_s, pending.input_s)

    def infer(self, model: Model, request: InferRequest, client: str, arrived: float) -> Reply:
        """submit, then wait for the reply on this thread."""
        return self.reply(self.submit(model, request, client, arrived))

    def record(self, model: str, status: int, elapsed_s: float, reply: Reply | None) -> None:
        """A request answered: its status in the metrics, its latency to the governor, its
        time outside the engines and its input time to the overhead histograms."""
        self.metrics.requests.labels(code=str(status), model=model).inc()
        if status == HTTPStatus.SERVICE_UNAVAILABLE:
            self.metrics.refusal_time.observe(elapsed_s)
        if status != HTTPStatus.OK or reply is None:
            self.metrics.errors.labels(kind=HTTPStatus(status).phrase.lower().replace(" ", "_")).inc()
            return
        self.metrics.latency.observe(elapsed_s)
        self.metrics.overhead.observe(max(elapsed_s - reply.engine_s, 0.0))
        self.metrics.input_time.observe(reply.input_s)
        governor = self.governors.get(model)
        if governor is not None:
            governor.record_latency(elapsed_s)

    def reload(self, name: str) -> None:
        """Load the model's engines from disk again; if they do not load, the loaded ones
        keep serving and the error says why."""
        model = self.model(name, None)
        governor = self.governors.get(name)
        model.reload(required_points=governor.points if governor else ())

    def close(self) -> None:
        self.shm.close()


class UnknownModel(UserError):
    """A request names a model (or version) this daemon does not serve: 404."""


# What each failure a request can meet answers: status, message prefix, headers.
ERROR_STATUS: list[tuple[type[Exception], HTTPStatus, str, dict[str, str]]] = [
    (UnknownModel, HTTPStatus.NOT_FOUND, "", {}),
    (UnknownRegion, HTTPStatus.NOT_FOUND, "", {}),
    (InputError, HTTPStatus.BAD_REQUEST, "", {}),  # before UserError: ProtocolError carries its own status
    (Overloaded, HTTPStatus.SERVICE_UNAVAILABLE, "overloaded: ", {"Retry-After": "1"}),
    (ModelUnavailable, HTTPStatus.SERVICE_UNAVAILABLE, "", {}),
    (RequestTimeout, HTTPStatus.GATEWAY_TIMEOUT, "timed out: ", {}),
    (UserError, HTTPStatus.BAD_REQUEST, "", {}),
]


def error_status(exc: Exception) -> tuple[HTTPStatus, str, dict[str, str]]:
    """(status, message, headers) for a failed request; anything unexpected is the
    server's fault (500)."""
    if isinstance(exc, ProtocolError):
        return HTTPStatus(exc.status), str(exc), {}
    for kind, status, prefix, headers in ERROR_STATUS:
        if isinstance(exc, kind):
            return status, prefix + str(exc), headers
    return HTTPStatus.INTERNAL_SERVER_ERROR, f"inference failed: {exc}", {}


def select_outputs(answer: Answer, names: list[str] | None) -> dict[str, np.ndarray]:
    available = {"probabilities": answer.probabilities, "prediction": answer.predictions.astype(np.int64), "exit": answer.exits.astype(np.int64)}
    if names is None:
        return available
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ProtocolError(f"unknown outputs {unknown}; this model has {list(available)}")
    return {n: available[n] for n in names}
