"""The HTTP layer: Open Inference Protocol v2 routes, Triton's system shared-memory and
model-repository (load) extensions, metrics, governor state, auth.

Threaded stdlib server with HTTP/1.1 keep-alive (tritonclient keeps its connections).
Every failure a client can cause is a 4xx with {"error": ...}; an engine failing is a
500; overload is a 503 answered at once; a request that waited past its timeout is 504.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote

from edge.daemon.metrics import CONTENT_TYPE
from edge.daemon.protocol import ProtocolError, encode_response, error_body, parse_request
from edge.daemon.service import EXTENSIONS, SERVER_NAME, SERVER_VERSION, App, UnknownModel, error_status
from edge.daemon.serving import Model

log = logging.getLogger(__name__)

DISCARD_LIMIT = 64 << 20  # bytes of an unwanted body read and dropped before closing instead
IDLE_TIMEOUT_S = 10.0  # a connection silent this long (mid-body, or idle keep-alive) is closed
MODEL_ROUTE = re.compile(r"^/v2/models/(?P<model>[^/]+)(?:/versions/(?P<version>[^/]+))?(?P<rest>/ready|/infer)?$")
SHM_ROUTE = re.compile(r"^/v2/systemsharedmemory(?:/region/(?P<region>[^/]+))?/(?P<action>status|register|unregister)$")
LOAD_ROUTE = re.compile(r"^/v2/repository/models/(?P<model>[^/]+)/load$")
MAX_ADMIN_BODY = 1 << 16  # a registration or load request is a few hundred bytes


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
            return self._json(HTTPStatus.OK, {"name": SERVER_NAME, "version": SERVER_VERSION, "extensions": EXTENSIONS})
        if path == "/metrics":
            if self._authorized():
                self._send(HTTPStatus.OK, self.app.metrics.render(), CONTENT_TYPE)
            return None
        if path == "/v2/edge/governor":
            if self._authorized():
                self._json(HTTPStatus.OK, {name: g.state() for name, g in self.app.governors.items()})
            return None
        shm = SHM_ROUTE.match(path)
        if shm and shm["action"] == "status":
            if self._authorized():
                self._admin(lambda _: self.app.shm.status(unquote(shm["region"] or "")))
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
        admin = self._admin_route(path)
        if admin is not None:
            if self._authorized(discard=True):
                self._admin(admin, read_body=True)
            return None
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

    # --- the extensions: shared memory, model reload ------------------------------------------

    def _admin_route(self, path: str) -> Callable[[dict[str, Any]], Any] | None:
        """The action a POST to a shared-memory or repository route asks for."""
        shm, load = SHM_ROUTE.match(path), LOAD_ROUTE.match(path)
        if shm and shm["action"] == "register" and shm["region"]:
            name = unquote(shm["region"])
            return lambda body: self.app.shm.register(name, body.get("key"), body.get("offset", 0), body.get("byte_size"))
        if shm and shm["action"] == "unregister":
            region = unquote(shm["region"] or "")
            return lambda _: self.app.shm.unregister(region)
        if load:
            model = unquote(load["model"])
            return lambda _: self.app.reload(model)
        return None

    def _admin_body(self) -> dict[str, Any]:
        length = self._content_length()
        if length > MAX_ADMIN_BODY:
            self._skip(length)
            raise ProtocolError(f"body of {length} bytes is too long for this route", HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        body = self._read_body() if length else b"{}"
        try:
            doc = json.loads(body)
        except (ValueError, RecursionError):
            raise ProtocolError("request body is not valid JSON") from None
        if not isinstance(doc, dict):
            raise ProtocolError("request body must be a JSON object")
        return doc

    def _admin(self, action: Callable[[dict[str, Any]], Any], read_body: bool = False) -> None:
        """Run an extension's action on the request's JSON body (if it has one); its result
        (if any) is the JSON answer, its error the error answer."""
        try:
            result = action(self._admin_body() if read_body else {})
        except Exception as exc:
            status, message, headers = error_status(exc)
            if status == HTTPStatus.INTERNAL_SERVER_ERROR:
                log.error("%s failed", self.path, exc_info=exc)
            return self._error(status, message, headers)
        if result is None:
            return self._empty(HTTPStatus.OK)
        return self._json(HTTPStatus.OK, result)

    # --- inference ---------------------------------------------------------------------------

    def _infer(self, model: Model) -> None:
        started = time.perf_counter()
        status = HTTPStatus.OK
        counted = False
        reply = None
        try:
            body = self._read_body()
            self.app.begin()  # answered before shutdown completes (a stalled upload is not waited for)
            counted = True
            request = parse_request(body, self.headers.get("Inference-Header-Content-Length"))
            reply = self.app.infer(model, request, f"http:{self.client_address[0]}:{self.client_address[1]}", started)
            payload, header_length = encode_response(model.name, request.id, reply.outputs, request.binary, reply.parameters, reply.shared)
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
        self.app.record(model.name, int(status), time.perf_counter() - started, reply)

    # --- plumbing ------------------------------------------------------------------------------

    def _model(self, match: re.Match[str], discard: bool = False) -> Model | None:
        try:
            return self.app.model(match["model"], match["version"])
        except UnknownModel as exc:
            if discard:
                self._discard_body()
            self._error(HTTPStatus.NOT_FOUND, str(exc))
            return None

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
