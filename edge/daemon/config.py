"""The daemon's one config file (TOML or JSON), with command-line overrides."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10 (JetPack 6): the same parser, as a package
    import tomli as tomllib

from edge.errors import UserError


class ConfigError(UserError):
    """A config file or override that cannot be used."""


@dataclass(frozen=True)
class DaemonConfig:
    model_repository: str = "runs/quickstart/engines"  # a manifest folder, or a folder of them (one model each)
    host: str = "127.0.0.1"  # localhost unless told otherwise
    port: int = 8000
    grpc_port: int = 8001  # the KServe v2 gRPC endpoint, on the same host; -1: off
    backend: str = "onnxruntime"
    policy: str = ""  # a governor policy file; empty: the defaults
    sensors: str = "auto"  # auto (jtop, else sysfs) | sysfs | replay:<trace> | none (no governor)
    sysfs_root: str = "/"
    tick_s: float = 1.0
    max_batch: int = 16
    max_delay_ms: float = 0.0  # how long a request may wait for others to batch with
    queue_size: int = 64  # requests waiting beyond this are refused at once (503)
    client_queue_share: int = 32  # requests one connection may have waiting: a flood from one client leaves room for the others
    shm_dir: str = "/dev/shm"  # where clients' shared-memory objects live (shm_open's folder)
    request_timeout_s: float = 10.0
    max_body_bytes: int = 16 * 1024 * 1024
    token_file: str = ""  # a bearer token for infer and admin endpoints; empty: no auth
    log_format: str = "json"  # json | text

    def __post_init__(self) -> None:
        if not 0 <= self.port < 65536:
            raise ConfigError(f"port must be 0-65535, got {self.port}")
        if not -1 <= self.grpc_port < 65536:
            raise ConfigError(f"grpc_port must be 0-65535, or -1 for no gRPC endpoint, got {self.grpc_port}")
        for name in ("tick_s", "request_timeout_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be positive")
        for name in ("max_batch", "queue_size", "client_queue_share", "max_body_bytes"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1")
        if self.max_delay_ms < 0:
            raise ConfigError("max_delay_ms must not be negative")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"log_format must be json or text, got {self.log_format!r}")
        if not (self.sensors in ("auto", "sysfs", "none") or self.sensors.startswith("replay:")):
            raise ConfigError(f"sensors must be auto, sysfs, none or replay:<trace>, got {self.sensors!r}")

    def token(self) -> str | None:
        if not self.token_file:
            return None
        try:
            token = Path(self.token_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"token_file {self.token_file}: {exc.strerror}") from None
        if not token:
            raise ConfigError(f"token_file {self.token_file} is empty")
        return token


_PYTHON_TYPES: dict[str, type | tuple[type, ...]] = {"str": str, "int": int, "float": (int, float)}


def load_config(path: Path | None, overrides: dict[str, Any]) -> DaemonConfig:
    """The file's values (if given), then the overrides that are not None."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read(path)
    known = {f.name: f for f in dataclasses.fields(DaemonConfig)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"{path}: unknown keys {unknown}; known: {sorted(known)}")
    values |= {k: v for k, v in overrides.items() if v is not None}
    for key, value in values.items():
        expected = _PYTHON_TYPES[str(known[key].type)]
        if not isinstance(value, expected) or isinstance(value, bool):
            raise ConfigError(f"{key} must be {known[key].type}, got {value!r}")
    return DaemonConfig(**values)


def _read(path: Path) -> dict[str, Any]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: not valid {'JSON' if path.suffix == '.json' else 'TOML'} ({exc})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the config must be a table of keys")
    return data
