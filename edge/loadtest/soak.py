"""The soak: edged in its own process under `concurrency` clients for `minutes`, mixed
protocols and operating points, every answer checked against the runtime in this
process, while faults come in turn (`edge-soak`).

Set-up, in a temporary folder: a copy of the engines (points without a measured latency
are timed here, so the governor has a ladder), a real sysfs-format board tree whose one
thermal zone the soak heats and cools every second (the governor switches each time), and
a policy that lets it move at once. Each fault cycle, in order:

  sensor   the zone's temp file vanishes for a few seconds, then comes back
  engine   a segment file is deleted, then corrupted, then restored; a reload is asked
           after each change
  flood    one gRPC channel sends far more requests than its share at once

and the documented end state of each is checked (docs/daemon.md, Faults under load). edged's
resident memory is read once the first fault cycle is over (the end of the warm-up: the
flood has grown every thread pool by then), every `rss_every_s`, and at the end; it must
grow less than 5% from there (judged on runs of RSS_MINUTES or more).
"""

from __future__ import annotations

import dataclasses
import http.client
import itertools
import json
import math
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import write_json_atomic
from edge.loadtest.clients import PROTOCOLS, Client, check
from edge.loadtest.process import Edged, child_env, start_edged
from edge.manifest import MANIFEST_NAME, load_manifest, save_manifest
from edge.runtime import Runtime

HOT_C, COOL_C = 90.0, 40.0  # above the soak policy's hard limit; below its soft limit
POLICY = {"soft_limit_c": 70.0, "hard_limit_c": 85.0, "hysteresis_c": 1.0, "min_dwell_s": 0.0, "stale_after_s": 3.0}
POOL = 64  # distinct images the clients draw from
MAX_ROWS = 4  # images a client's request carries, at most
FAST_REFUSAL_MS = 10.0  # a refusal's mean time in edged
RSS_MINUTES = 10.0  # shorter runs report memory but do not judge it: allocator pools are still settling


@dataclass(frozen=True)
class SoakConfig:
    engines: Path
    minutes: float = 60.0
    concurrency: int = 8
    report: Path = Path("docs/results/soak.json")
    rss_every_s: float = 600.0
    fault_every_s: float = 300.0
    warmup_s: float = 60.0  # load before the first fault cycle; the warm memory sample follows that cycle
    seed: int = 0

    @property
    def seconds(self) -> float:
        return self.minutes * 60.0


@dataclass
class Tally:
    """What the clients saw: answers by protocol, errors, wrong answers (a few of each kept)."""

    answered: Counter[str] = field(default_factory=Counter)
    errors: list[dict[str, Any]] = field(default_factory=list)
    wrong: list[dict[str, Any]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, kind: str, entry: dict[str, Any]) -> None:
        with self.lock:
            (self.errors if kind == "error" else self.wrong).append(entry)


class Board:
    """A sysfs tree with one thermal zone the soak heats, cools, removes and restores."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.zone = root / "sys/class/thermal/thermal_zone0"
        self.zone.mkdir(parents=True)
        (self.zone / "type").write_text("cpu-thermal\n")
        self.lock = threading.Lock()
        self.dead = False
        self.set(COOL_C)

    def set(self, celsius: float) -> None:
        with self.lock:
            if not self.dead:
                (self.zone / "temp").write_text(f"{int(celsius * 1000)}\n")

    def kill(self) -> None:
        with self.lock:
            self.dead = True
            (self.zone / "temp").unlink()

    def revive(self, celsius: float) -> None:
        with self.lock:
            self.dead = False
        self.set(celsius)


def prepare(config: SoakConfig, workdir: Path, pool: np.ndarray) -> tuple[Path, dict[str, Any]]:
    """The repository (a copy of the engines, every point's latency measured) and the policy."""
    model = workdir / "repository" / config.engines.resolve().name
    shutil.copytree(config.engines, model)
    manifest = load_manifest(model)
    runtime = Runtime(model)
    points = []
    for point in manifest.operating_points:
        if "mean_ms" not in point.measured and point.name in runtime.runnable_points():
            started = time.perf_counter()
            for i in range(20):
                runtime.infer(pool[i : i + 1], point_name=point.name)
            point = dataclasses.replace(point, measured={**point.measured, "mean_ms": (time.perf_counter() - started) / 20 * 1e3})
        points.append(point)
    runtime.close()
    save_manifest(dataclasses.replace(manifest, operating_points=points), model / MANIFEST_NAME)
    ladder = sorted((p for p in points if "mean_ms" in p.measured), key=lambda p: -p.measured["mean_ms"])
    return model, {**POLICY, "points": [p.name for p in ladder]}


def references(model: Path, pool: np.ndarray) -> dict[str, Any]:
    """Every runnable point's answer for every pool image, computed in this process."""
    runtime = Runtime(model)
    try:
        return {name: runtime.infer(pool, point_name=name) for name in runtime.runnable_points()}
    finally:
        runtime.close()



class Soak:
    def __init__(self, config: SoakConfig) -> None:
        self.config = config
        self.workdir = Path(tempfile.mkdtemp(prefix="edge-soak-"))
        rng = np.random.default_rng(config.seed)
        manifest = load_manifest(config.engines)
        self.pool = rng.random((POOL, *manifest.input.shape[1:]), dtype=np.float32)
        self.classes = len(manifest.classes)
        self.max_rows = min(POOL, manifest.batch.get("max") or POOL)
        self.model_dir, policy = prepare(config, self.workdir, self.pool)
        self.refs = references(self.model_dir, self.pool)
        self.points = list(policy["points"])
        (self.workdir / "policy.json").write_text(json.dumps(policy))
        self.board = Board(self.workdir / "board")
        self.stop = threading.Event()
        self.tally = Tally()
        self.faults: list[dict[str, Any]] = []
        self.rss: list[dict[str, Any]] = []
        self.edged: Edged | None = None
        self.started = 0.0

    # --- the parts ---------------------------------------------------------------------------

    def _settings(self) -> dict[str, Any]:
        return {"sensors": "sysfs", "sysfs_root": str(self.board.root), "policy": str(self.workdir / "policy.json"), "tick_s": 0.25,
                "max_batch": 16, "queue_size": 64, "client_queue_share": 32}

    def _client(self, protocol: str) -> Client:
        assert self.edged is not None
        return Client(protocol, self.edged.http, self.edged.grpc, self.edged.model, MAX_ROWS, self.pool.shape[1:], self.classes)

    def worker(self, k: int) -> None:
        """Round-robin over the protocols, 1-4 images a request, the governor's point or a named one."""
        rng = random.Random(self.config.seed * 1000 + k)
        clients = {p: self._client(p) for p in PROTOCOLS}
        try:
            for i in itertools.count():
                if self.stop.is_set():
                    return
                protocol = PROTOCOLS[(k + i) % len(PROTOCOLS)]
                rows = np.array(rng.sample(range(POOL), rng.randint(1, MAX_ROWS)))
                point = rng.choice([None, *self.points])
                parameters = None if point is None else {"operating_point": point}
                try:
                    answer = clients[protocol].infer(self.pool[rows], parameters)
                except Exception as exc:
                    self.tally.note("error", {"t_s": self.elapsed(), "protocol": protocol, "error": str(exc)[:300]})
                    continue
                why = check(answer, rows, self.refs, point)
                with self.tally.lock:
                    self.tally.answered[protocol] += 1
                if why:
                    self.tally.note("wrong", {"t_s": self.elapsed(), "protocol": protocol, "why": why})
        finally:
            for client in clients.values():
                client.close()

    def thermostat(self) -> None:
        """Hot, cool, hot, ... every second: the governor switches each time."""
        hot = False
        while not self.stop.wait(1.0):
            hot = not hot
            self.board.set(HOT_C if hot else COOL_C)

    def elapsed(self) -> float:
        return time.monotonic() - self.started

    def rss_mb(self) -> float:
        import psutil

        assert self.edged is not None
        return float(psutil.Process(self.edged.process.pid).memory_info().rss) / 2**20

    def sample_rss(self, label: str) -> None:
        self.rss.append({"t_s": round(self.elapsed(), 1), "rss_mb": round(self.rss_mb(), 2), "label": label})

    # --- faults ------------------------------------------------------------------------------

    def _get(self, path: str) -> tuple[int, Any]:
        return self._request("GET", path)

    def _request(self, method: str, path: str) -> tuple[int, Any]:
        assert self.edged is not None
        host, port = self.edged.http.rsplit(":", 1)
        connection = http.client.HTTPConnection(host, int(port), timeout=60)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None, headers={"Content-Length": "0"} if method == "POST" else {})
            response = connection.getresponse()
            data = response.read()
        finally:
            connection.close()
        return response.status, json.loads(data) if data.startswith(b"{") or data.startswith(b"[") else data.decode()

    def _until(self, condition: Callable[[], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if condition():
                return True
            time.sleep(0.1)
        return False

    def _governor(self) -> dict[str, Any]:
        assert self.edged is not None
        _, state = self._get("/v2/edge/governor")
        return dict(state[self.edged.model])

    def sensor_fault(self) -> dict[str, Any]:
        """Expected: sensor lost -> the cheapest point, at once; back -> the sensor read again."""
        assert self.edged is not None
        cheapest = self.points[-1]
        self.board.kill()

        def lost() -> bool:
            state = self._governor()
            return bool(state["decisions"]) and not state["decisions"][-1]["sensor_ok"] and state["point"] == cheapest
        went_down = self._until(lost, 5.0)
        self.board.revive(COOL_C)

        def back() -> bool:
            state = self._governor()
            return bool(state["decisions"]) and state["decisions"][-1]["sensor_ok"]
        came_back = self._until(back, 5.0)
        return {"kind": "sensor", "expected": f"lost: at {cheapest!r} with sensor_ok false; back: sensor_ok true",
                "observed": {"went_to_cheapest": went_down, "came_back": came_back}, "ok": went_down and came_back}

    def engine_fault(self) -> dict[str, Any]:
        """Expected: answers go on from the loaded engines; a reload refuses, naming the file;
        after the file is restored a reload succeeds."""
        assert self.edged is not None
        segment = self.model_dir / load_manifest(self.model_dir).segments[0].file
        saved = segment.read_bytes()
        load = f"/v2/repository/models/{self.edged.model}/load"
        segment.unlink()
        deleted = self._request("POST", load)
        segment.write_bytes(b"corrupt" * 64)
        corrupt = self._request("POST", load)
        segment.write_bytes(saved)
        restored = self._request("POST", load)
        refused = [s == 400 and segment.name in str(body) for s, body in (deleted, corrupt)]
        return {"kind": "engine", "file": segment.name, "expected": "reload refused with the file named (deleted, corrupt); 200 once restored",
                "observed": {"deleted": deleted, "corrupt": corrupt, "restored": restored[0]}, "ok": all(refused) and restored[0] == 200}

    def flood(self, count: int = 400) -> dict[str, Any]:
        """Expected: the flooder's excess refused at once (UNAVAILABLE); nothing else fails.
        The flooder is its own process (its own connection, as a program on the board has);
        its requests are full batches at the costliest point, so they outrun the engines even on
        a small model."""
        assert self.edged is not None
        errors_before = len(self.tally.errors)
        refusals_before = self._metric_sums("edge_refusal_seconds")
        shape = ",".join(map(str, (self.max_rows, *self.pool.shape[1:])))
        command = [sys.executable, "-m", "edge.loadtest.flood", "--url", self.edged.grpc, "--model", self.edged.model, "--shape", shape, "--count", str(count),
                   "--point", self.points[0]]
        done = subprocess.run(command, capture_output=True, text=True, timeout=300, env=child_env())
        if done.returncode != 0:
            return {"kind": "flood", "observed": {"flooder_failed": done.stderr[-500:]}, "ok": False}
        observed = json.loads(done.stdout)
        observed["other_clients_failed"] = len(self.tally.errors) - errors_before
        seconds, refusals = self._metric_sums("edge_refusal_seconds") - refusals_before
        observed["server_refusal_mean_ms"] = 1e3 * seconds / refusals if refusals else None
        # Fast: edged refuses on arrival, without waiting for the engines. (The flooder's own
        # timings also hold its backlog of calls in flight on its one connection.)
        fast = observed["server_refusal_mean_ms"] is not None and observed["server_refusal_mean_ms"] < FAST_REFUSAL_MS
        ok = observed["answered"] == count and observed["refused"] > 0 and fast and not observed["other_statuses"] and observed["other_clients_failed"] == 0
        return {"kind": "flood", "expected": f"excess refused (UNAVAILABLE) within {FAST_REFUSAL_MS:g} ms of arrival in edged; the other clients unaffected",
                "observed": observed, "ok": ok}

    def _metric_sums(self, histogram: str) -> np.ndarray:
        """(sum, count) of one of edged's histograms."""
        _, text = self._get("/metrics")
        values = dict(line.rsplit(" ", 1) for line in str(text).splitlines() if line.startswith((f"{histogram}_sum", f"{histogram}_count")))
        return np.array([float(values.get(f"{histogram}_sum", 0.0)), float(values.get(f"{histogram}_count", 0.0))])

    def fault_cycle(self) -> None:
        for fault in (self.sensor_fault, self.engine_fault, self.flood):
            if self.stop.is_set():
                return
            started = self.elapsed()
            entry = fault()
            self.faults.append({"t_s": round(started, 1), **entry})

    # --- the run -----------------------------------------------------------------------------

    def run(self) -> dict[str, Any]:
        from tqdm import tqdm

        self.edged = start_edged(self.model_dir.parent, self._settings())
        self.started = time.monotonic()
        threads = [threading.Thread(target=self.worker, args=(k,), name=f"client-{k}", daemon=True) for k in range(self.config.concurrency)]
        threads.append(threading.Thread(target=self.thermostat, name="thermostat", daemon=True))
        for thread in threads:
            thread.start()
        next_fault = min(self.config.warmup_s, self.config.seconds / 6)
        next_rss = math.inf  # the warm-up ends after the first fault cycle: every thread pool edged grows is grown by then
        try:
            with tqdm(total=round(self.config.seconds), desc="soak", unit="s") as bar:
                while (now := self.elapsed()) < self.config.seconds:
                    if now >= next_fault and now < self.config.seconds - 5:
                        self.fault_cycle()
                        next_fault = now + self.config.fault_every_s
                        if not self.rss:
                            next_rss = self.elapsed() + 2.0
                    if self.elapsed() >= next_rss:
                        self.sample_rss("warm" if not self.rss else "periodic")
                        next_rss = self.elapsed() + self.config.rss_every_s
                    time.sleep(0.5)
                    bar.n = min(round(self.elapsed()), bar.total)
                    bar.set_postfix(answered=sum(self.tally.answered.values()), errors=len(self.tally.errors), wrong=len(self.tally.wrong))
            self.sample_rss("end")
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(30)
            try:
                report = self.report()
            finally:  # edged stopped and the copies removed even if it cannot answer for the report
                exit_code = self.edged.stop()
                shutil.rmtree(self.workdir, ignore_errors=True)
            report["edged_exit_code"] = exit_code
            report["passed"] = report["passed"] and exit_code == 0
        return report

    def report(self) -> dict[str, Any]:
        _, metrics = self._get("/metrics")
        switches = sum(float(line.rsplit(" ", 1)[1]) for line in str(metrics).splitlines() if line.startswith("edge_governor_switches_total{"))
        live = self._get("/v2/health/live")[0] == 200
        warm = next((r for r in self.rss if r["label"] == "warm"), self.rss[0])["rss_mb"]  # a run too short for a fault cycle: its first sample
        growth = (self.rss[-1]["rss_mb"] - warm) / warm
        report = {
            "engines": str(self.config.engines), "minutes": self.config.minutes, "concurrency": self.config.concurrency, "protocols": list(PROTOCOLS), "points": self.points,
            "answered": dict(self.tally.answered), "answered_total": sum(self.tally.answered.values()),
            "errors": len(self.tally.errors), "error_samples": self.tally.errors[:10],
            "wrong_answers": len(self.tally.wrong), "wrong_samples": self.tally.wrong[:10],
            "governor_switches": switches, "switches_per_second": switches / self.config.seconds,
            "rss": self.rss, "rss_growth_after_warmup": growth, "faults": self.faults, "alive_at_end": live,
        }
        report["rss_checked"] = self.config.minutes >= RSS_MINUTES
        report["passed"] = (not self.tally.errors and not self.tally.wrong and live and (growth < 0.05 or not report["rss_checked"])
                            and all(f["ok"] for f in self.faults) and switches >= self.config.seconds / 2)
        return report


def run_soak(config: SoakConfig) -> dict[str, Any]:
    report = Soak(config).run()
    config.report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config.report, report)
    print(summary(report))
    print(f"wrote {config.report}")
    return report


def summary(report: dict[str, Any]) -> str:
    lines = [f"soak: {report['minutes']:g} min at concurrency {report['concurrency']}: {report['answered_total']} answers "
             f"({', '.join(f'{p} {n}' for p, n in report['answered'].items())}), {report['errors']} errors, {report['wrong_answers']} wrong",
             f"governor switches: {report['governor_switches']:.0f} ({report['switches_per_second']:.2f}/s)",
             "RSS (MB): " + ", ".join(f"{r['t_s']:.0f}s {r['rss_mb']:.1f}" for r in report["rss"]) + f"; growth after warm-up {100 * report['rss_growth_after_warmup']:+.2f}%"]
    for fault in report["faults"]:
        lines.append(f"  {fault['t_s']:7.1f}s {fault['kind']:>6}: {'ok' if fault['ok'] else 'FAILED'}  {json.dumps(fault['observed'])[:240]}")
    lines.append("PASSED" if report["passed"] else "FAILED")
    return "\n".join(lines)
