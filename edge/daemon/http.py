"""The HTTP layer: Open Inference Protocol v2 routes, metrics, governor state, auth.

Threaded stdlib server with HTTP/1.1 keep-alive (tritonclient keeps its connections).
Every failure a client can cause is a 4xx with {"error": ...}; an engine failing is a
500; overload is a 503 answered at once; a request that waited past its timeout is 504.
"""

from __future__ import annotations

import hmac
import json
import logging
import math
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np

from edge.daemon.config import DaemonConfig
from edge.daemon.metrics import CONTENT_TYPE, Registry
from edge.daemon.protocol import ProtocolError, encode_response, error_body, parse_request
from edge.daemon.serving import Answer, GovernorLoop, Model, ModelUnavailable, Overloaded, RequestTimeout
from edge.errors import InputError, UserError

log = logging.getLogger(__name__)

SERVER_NAME, SERVER_VERSION = "edged", "0.1.0"
DISCARD_LIMIT = 64 << 20  # bytes of an unwanted body read and dropped before closing instead
IDLE_TIMEOUT_S = 10.0  # a connection silent this long (mid-body, or idle keep-alive) is closed
MODEL_ROUTE = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")


class App:
    """What the handlers serve: the models, the governor loop, metrics, config."""

    def __init__(self, config: DaemonConfig, models: dict[str, Model], governors: dict[str, GovernorLoop], metrics: Registry) -> None:
        self.config, self.models, self.governors, self.metrics = config, models, governors, metrics
        self.token = config.token()
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


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    timeout = IDLE_TIMEOUT_S
    disable_nagle_algorithm = True  # headers and body go in separate writes: Nagle + delayed ACK cost 40 ms
    server_version = f"{SERVER_NAME}/{SERVER_VERSION}"
    app: App  # set on the subclass the server makes

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's name
        log.debug("%s " + format, self.address_string(), *args)

    # --- routing ---------------------------------------------------------------------------

    def do_GET(self) -> None:
        path = self.path.split("?", 1)[0]
        if path == "/v2/health/live":
            return self._empty(HTTPStatus.OK)  # answering at all is being live
        if path == "/v2/health/ready":
            return self._empty(HTTPStatus.OK if self.app.ready() else HTTPStatus.SERVICE_UNAVAILABLE)
        if path == "/v2":
            return self._json(HTTPStatus.OK, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": ["binary_tensor_data"]})
        if path == "/metrics":
            if self._authorized():
                self._send(HTTPStatus.OK, self.app.metrics.render(), CONTENT_TYPE)
            return None
        if path == "/v2/edge/governor":
            if self._authorized():
                self._json(HTTPStatus.OK, {name: g.state() for name, g in self.app.governors.items()})
            return None
        match = MODEL_ROUTE.match(path)
        if match and match["rest"] != "/infer":
            model = self._model(match)
            if model is None:
                return None
            if match["rest"] == "/ready":
                return self._empty(HTTPStatus.OK if model.ready else HTTPStatus.SERVICE_UNAVAILABLE)
            return self._json(HTTPStatus.OK, model.metadata())
        return self._error(HTTPStatus.NOT_FOUND, f"no route GET {path}")

    def do_POST(self) -> None:
        path = self.path.split("?", 1)[0]
        match = MODEL_ROUTE.match(path)
        if not match or match["rest"] != "/infer":
            self._discard_body()
            return self._error(HTTPStatus.NOT_FOUND, f"no route POST {path}")
        if not self._authorized(discard=True):
            return None
        model = self._model(match, discard=True)
        if model is None:
            return None
        self._infer(model)

    # --- inference ---------------------------------------------------------------------------

    def _infer(self, model: Model) -> None:
        started = time.perf_counter()
        status = HTTPStatus.OK
        counted = False
        try:
            body = self._read_body()
            self.app.begin()  # answered before shutdown completes (a stalled upload is not waited for)
            counted = True
            request = parse_request(body, self.headers.get("Inference-Header-Content-Length"))
            timeout = min(self.app.config.request_timeout_s, request.timeout_s or math.inf)
            answer = model.submit(request.inputs, timeout, request.operating_point, request.latency_budget_ms).wait()
            outputs = select_outputs(answer, request.outputs)
            parameters = {"operating_point": answer.operating_point, "exits": ",".join(map(str, answer.exits.tolist()))}
            payload, header_length = encode_response(model.name, request.id, outputs, request.binary, parameters)
            headers = {"Inference-Header-Content-Length": str(header_length)} if header_length is not None else {}
            self._send(HTTPStatus.OK, payload, "application/octet-stream" if header_length else "application/json", headers)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # answered; the client left before reading it
        except Exception as exc:
            status, message, headers = error_status(exc)
            if status == HTTPStatus.INTERNAL_SERVER_ERROR:  # an engine failing: the request fails, the server goes on
                log.error("inference failed", exc_info=exc)
            self._error(status, message, headers)
        finally:
            if counted:
                self.app.end()
        elapsed = time.perf_counter() - started
        self.app.metrics.requests.labels(code=str(int(status)), model=model.name).inc()
        if status != HTTPStatus.OK:
            self.app.metrics.errors.labels(kind=status.phrase.lower().replace(" ", "_")).inc()
        else:
            self.app.metrics.latency.observe(elapsed)
            governor = self.app.governors.get(model.name)
            if governor is not None:
                governor.record_latency(elapsed)

    # --- plumbing ------------------------------------------------------------------------------

    def _model(self, match: re.Match[str], discard: bool = False) -> Model | None:
        model = self.app.models.get(match["model"])
        if model is None:
            if discard:
                self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"unknown model {match['model']!r}; served: {sorted(self.app.models)}")
            return None
        if match["version"] not in (None, "1"):
            if discard:
                self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, f"model {match['model']!r} has only version 1")
            return None
        return model

    def _authorized(self, discard: bool = False) -> bool:
        token = self.app.token
        if token is None:
            return True
        scheme, _, given = self.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), token.encode()):
            return True
        if discard:
            self._discard_body()
        self._error(HTTPStatus.UNAUTHORIZED, "a bearer token is required (Authorization: Bearer <token>)", {"WWW-Authenticate": "Bearer"})
        return False

    def _content_length(self) -> int:
        """The body's length; where it cannot be known the connection is closed after the
        answer, since its unread bytes would be taken for the next request."""
        if self.headers.get("Transfer-Encoding"):
            self.close_connection = True
            raise ProtocolError("chunked bodies are not supported: send Content-Length", HTTPStatus.LENGTH_REQUIRED)
        raw = self.headers.get("Content-Length")
        if raw is None:
            self.close_connection = True
            raise ProtocolError("Content-Length is required", HTTPStatus.LENGTH_REQUIRED)
        try:
            length = int(raw)
        except ValueError:
            self.close_connection = True
            raise ProtocolError(f"Content-Length must be an integer, got {raw!r}") from None
        if length < 0:
            self.close_connection = True
            raise ProtocolError("Content-Length must not be negative")
        return length

    def _read_body(self) -> bytes:
        length = self._content_length()
        if length > self.app.config.max_body_bytes:
            self._skip(length)
            raise ProtocolError(f"body of {length} bytes exceeds the {self.app.config.max_body_bytes}-byte limit", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        if self.headers.get("Content-Encoding", "identity").lower() != "identity":
            self._skip(length)
            raise ProtocolError(f"Content-Encoding {self.headers['Content-Encoding']!r} is not supported: send the body uncompressed", HTTPStatus.UNSUPPORTED_MEDIA_TYPE)
        try:
            body = self.rfile.read(length)
        except OSError:  # TimeoutError after IDLE_TIMEOUT_S of silence, or a reset
            self.close_connection = True
            raise ProtocolError(f"the body did not arrive within {IDLE_TIMEOUT_S:g} s", HTTPStatus.REQUEST_TIMEOUT) from None
        if len(body) != length:
            self.close_connection = True
            raise ProtocolError(f"body ended after {len(body)} of {length} bytes")
        return body

    def _skip(self, length: int) -> None:
        """Read an unwanted body so the client sees the answer rather than a reset; past
        DISCARD_LIMIT, close instead."""
        if length > DISCARD_LIMIT:
            self.close_connection = True
            return
        try:
            while length > 0:
                chunk = self.rfile.read(min(length, 1 << 16))
                if not chunk:
                    break
                length -= len(chunk)
        except OSError:  # a stalled sender (the idle timeout) or a reset
            pass
        if length > 0:
            self.close_connection = True

    def _discard_body(self) -> None:
        try:
            self._skip(self._content_length())
        except ProtocolError:
            pass

    def _empty(self, status: HTTPStatus) -> None:
        self._send(status, b"", "text/plain")

    def _json(self, status: HTTPStatus, doc: Any) -> None:
        self._send(status, json.dumps(doc).encode(), "application/json")

    def _error(self, status: HTTPStatus, message: str, headers: dict[str, str] | None = None) -> None:
        self._send(status, error_body(message), "application/json", headers)

    def _send(self, status: HTTPStatus, body: bytes, content_type: str, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)


# What each failure a request can meet answers: status, message prefix, headers.
ERROR_STATUS: list[tuple[type[Exception], HTTPStatus, str, dict[str, str]]] = [
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


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Into the structured log, not a plain traceback on stderr."""
        log.warning("connection from %s failed", client_address, exc_info=True)


def make_server(app: App, host: str, port: int) -> Server:
    handler = type("BoundHandler", (Handler,), {"app": app})
    return Server((host, port), handler)


def serve_in_thread(server: Server) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2}, name="http", daemon=True)
    thread.start()
    return thread
