"""edged in its own process, on free ports (benchmarks and the soak)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edge.errors import UserError


@dataclass
class Edged:
    process: subprocess.Popen[str]
    http: str  # host:port
    grpc: str  # host:port
    model: str
    folder: Path  # its config and its log (edged.log): kept only if it does not exit cleanly
    log: threading.Thread  # copies edged's stderr to the log

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, then the exit code (killed if it does not stop in time)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
        code = self.process.wait()
        self.log.join(10.0)
        if self.process.stderr is not None:
            self.process.stderr.close()
        if code == 0:
            shutil.rmtree(self.folder, ignore_errors=True)
        else:
            print(f"edged exited with {code}; its log: {self.folder / 'edged.log'}", file=sys.stderr)
        return code


def child_env() -> dict[str, str]:
    """This environment, with this checkout importable: a child process runs the same code."""
    root = Path(__file__).resolve().parents[2]
    return {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def start_edged(repository: Path, settings: dict[str, Any]) -> Edged:
    """edged serving `repository` with `settings` over the config's defaults, on free
    ports; its log (stderr) is copied to edged.log beside its config, in a folder of its
    own that `stop` removes when edged exits cleanly."""
    config = {"model_repository": str(repository.resolve()), "port": 0, "grpc_port": 0, "sensors": "none", "log_format": "json", **settings}
    folder = Path(tempfile.mkdtemp(prefix="edged-"))
    (folder / "edged.json").write_text(json.dumps(config))
    command = [sys.executable, "-m", "edge.daemon.main", "--config", str(folder / "edged.json")]
    process = subprocess.Popen(command, env=child_env(), stderr=subprocess.PIPE, text=True)
    assert process.stderr is not None
    grpc = ""
    for line in process.stderr:
        message = json.loads(line)["message"]
        if message.startswith("gRPC on "):
            grpc = message.removeprefix("gRPC on ")
        if message.startswith("serving"):
            return Edged(process, message.rsplit("//", 1)[1], grpc, message.split("'")[1], folder, _drain(process, folder / "edged.log"))
    raise UserError(f"edged did not start (exit code {process.wait()})")


def _drain(process: subprocess.Popen[str], path: Path) -> threading.Thread:
    """Keep reading edged's log into a file, so a full pipe never blocks it."""
    def copy() -> None:
        assert process.stderr is not None
        with path.open("a") as out:
            for line in process.stderr:
                out.write(line)
    thread = threading.Thread(target=copy, name="edged-log", daemon=True)
    thread.start()
    return thread
