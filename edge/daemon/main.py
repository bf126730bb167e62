"""edged: load the models, start the governor loops, the HTTP and gRPC servers, stop gracefully.

    edged --config deploy/edged.toml [--port 8000] [--grpc-port 8001] [--host 127.0.0.1] [--model-repository DIR]

SIGTERM or SIGINT: stop accepting, answer every queued request, close the engines and
the shared-memory regions clients registered, exit 0. Under systemd (Type=notify) it sends READY=1 once it serves and STOPPING=1 on
the way out. Logs are JSON lines on stderr (log_format = "text" for people).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import logging
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from edge.daemon.config import DaemonConfig, load_config
from edge.daemon.grpc_server import GrpcServer
from edge.daemon.http import Server, make_server, serve_in_thread
from edge.daemon.metrics import Registry
from edge.daemon.service import App
from edge.daemon.serving import GovernorLoop, Model, find_models, open_sensors, policy_of
from edge.errors import EdgeError, UserError

log = logging.getLogger("edged")

GRPC_CALLS_PER_QUEUED = 4  # gRPC calls in flight per queue slot before the transport refuses more (refusals take no slot for long)
GRPC_GRACE_S = 20.0  # what calls already running get at shutdown (within systemd's 30 s)


class Daemon:
    def __init__(self, config: DaemonConfig) -> None:
        self.config = config
        self.metrics = Registry()
        self.models = {
            name: Model(name, folder, config.backend, self.metrics, config.max_batch, config.max_delay_ms / 1e3, config.queue_size, config.client_queue_share)
            for name, folder in find_models(Path(config.model_repository)).items()
        }
        loops = {name: self._governor(m) for name, m in self.models.items()}
        self.governors = {name: g for name, g in loops.items() if g is not None}
        self.app = App(config, self.models, self.governors, self.metrics)
        self.server: Server = make_server(self.app, config.host, config.port)
        self.grpc: GrpcServer | None = None
        if config.grpc_port >= 0:
            try:
                self.grpc = GrpcServer(self.app, config.host, config.grpc_port, max_rpcs=config.queue_size * GRPC_CALLS_PER_QUEUED)
            except RuntimeError as exc:  # grpcio: the address is taken
                self.server.server_close()
                raise OSError(f"cannot serve gRPC on {config.host}:{config.grpc_port} ({exc})") from None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.server.server_address[:2]
        return str(host), int(port)

    def _governor(self, model: Model) -> GovernorLoop | None:
        if model.runtime is None:
            return None
        self.metrics.operating_point.replace([({"model": model.name, "point": model.runtime.operating_point}, 1.0)], model=model.name)
        try:
            source = open_sensors(self.config.sensors, self.config.sysfs_root)
        except EdgeError as exc:
            log.error("no sensor source (%s): serving %s at its default point without a governor", exc, model.name)
            self.metrics.sensor_up.labels(source="none").set(0.0)
            return None
        if source is None:
            return None
        try:
            loop = GovernorLoop(model, source, policy_of(self.config.policy), self.config.tick_s, self.metrics)
        except EdgeError as exc:
            source.close()
            log.error("governor off for %s: %s", model.name, exc)
            return None
        loop.tick()  # a first decision before the first request
        return loop

    def start(self) -> None:
        host = self.address[0]
        if self.app.token is None and not is_loopback(host):
            log.warning("listening on %s without a token: anyone who reaches this address can run inference and read the metrics"
                        " (set token_file)", host)
        for loop in self.governors.values():
            loop.start()
        self._thread = serve_in_thread(self.server)
        if self.grpc is not None:
            self.grpc.start()
            log.info("gRPC on %s:%d", self.grpc.host, self.grpc.port)
        host, port = self.address
        log.info("serving %s on http://%s:%d", sorted(self.models), host, port)

    def stop(self) -> None:
        """Stop accepting, finish what is queued, release everything."""
        self.server.shutdown()
        grpc = threading.Thread(target=self.grpc.stop, args=(GRPC_GRACE_S,), name="grpc-stop") if self.grpc is not None else None
        if grpc is not None:
            grpc.start()  # refuses new calls at once; the running ones finish as the models drain
        for model in self.models.values():
            model.stop(drain_timeout_s=20.0 / max(len(self.models), 1))  # all within systemd's 30 s
        if not self.app.wait_idle(5.0):
            log.warning("stopping with requests still being answered")
        if grpc is not None:
            grpc.join(GRPC_GRACE_S + 5.0)
        for loop in self.governors.values():
            loop.stop()
        self.server.server_close()
        self.app.close()  # the clients' shared-memory regions: unregistered, never left open
        log.info("stopped")


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a name: loopback only if it is localhost
        return host == "localhost"


def sd_notify(message: str) -> bool:
    """systemd's readiness protocol: a datagram to $NOTIFY_SOCKET (no-op without it)."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return False
    if address.startswith("@"):
        address = "\0" + address[1:]  # abstract namespace
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(message.encode(), address)
    return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(fmt: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edged", description=__doc__.splitlines()[0])
    p.add_argument("--config", type=Path, help="TOML or JSON (deploy/edged.toml shows every key)")
    p.add_argument("--model-repository")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.add_argument("--grpc-port", type=int, help="-1: no gRPC endpoint")
    p.add_argument("--sensors", help="auto | sysfs | replay:<trace> | none")
    p.add_argument("--policy")
    p.add_argument("--token-file")
    p.add_argument("--log-format", choices=["json", "text"])
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    overrides = {k: v for k, v in vars(args).items() if k != "config"}
    try:
        config = load_config(args.config, overrides)
        setup_logging(config.log_format)
        daemon = Daemon(config)
    except (UserError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    daemon.start()
    sd_notify("READY=1")
    stop.wait()
    sd_notify("STOPPING=1")
    daemon.stop()
    return 0


def cli() -> int:
    return main()


if __name__ == "__main__":
    raise SystemExit(main())
