"""edged over loopback: tritonclient (JSON and binary), raw HTTP for malformed requests,
concurrent load, overload, faults (a sensor dying, an engine missing), auth, shutdown."""

from __future__ import annotations

import dataclasses
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from edge.daemon.config import ConfigError, DaemonConfig, load_config
from edge.daemon.main import Daemon, main
from edge.manifest import load_manifest, save_manifest
from edge.runtime import Runtime
from tests.boards import orin_nano
from tests.helpers import INPUT_SHAPE

tritonclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the 'test' extra) is not installed")
ROOT = Path(__file__).resolve().parents[1]
MEASURED = {"full": (3.0, 0.90), "eager": (1.0, 0.80), "late": (2.0, 0.85)}


@pytest.fixture(scope="module")
def engines(tmp_path_factory: pytest.TempPathFactory, built_dir: Path) -> Path:
    """The digits engines, their operating points given measured figures (as edge-calibrate writes)."""
    folder = Path(shutil.copytree(built_dir, tmp_path_factory.mktemp("repo") / "digits"))
    manifest = load_manifest(folder)
    points = [dataclasses.replace(p, measured={"mean_ms": MEASURED[p.name][0], "accuracy": MEASURED[p.name][1]}) for p in manifest.operating_points]
    save_manifest(dataclasses.replace(manifest, operating_points=points), folder / "manifest.json")
    return folder


def start(config: DaemonConfig) -> Daemon:
    daemon = Daemon(config)
    daemon.start()
    return daemon


@pytest.fixture
def served(engines: Path, tmp_path: Path) -> Iterator[tuple[Daemon, str]]:
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="sysfs", sysfs_root=str(orin_nano(tmp_path)), tick_s=0.05))
    host, port = daemon.address
    yield daemon, f"{host}:{port}"
    daemon.stop()


def serving_url(process: subprocess.Popen[str]) -> str:
    """host:port from the JSON log line edged writes when it starts serving."""
    for line in process.stderr:  # type: ignore[union-attr]
        entry = json.loads(line)
        if entry["message"].startswith("serving"):
            return str(entry["message"].rsplit("//", 1)[1])
    raise AssertionError("edged ended without serving")


def client(url: str) -> Any:
    return tritonclient.InferenceServerClient(url, connection_timeout=30, network_timeout=30)


def infer(url: str, images: np.ndarray, binary: bool = True, **kw: Any) -> Any:
    tensor = tritonclient.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images, binary_data=binary)
    outputs = [tritonclient.InferRequestedOutput(n, binary_data=binary) for n in ("probabilities", "exit", "prediction")]
    return client(url).infer("digits", [tensor], outputs=outputs, **kw)


def raw(url: str, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request(method, path, body=body, headers=headers or {})
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, (json.loads(data) if data and response.getheader("Content-Type", "").startswith("application/json") else {})


def json_request(images: np.ndarray, name: str = "input", datatype: Any = "FP32", **extra: Any) -> bytes:
    return json.dumps({"inputs": [{"name": name, "shape": list(images.shape), "datatype": datatype, "data": images.ravel().tolist()}], **extra}).encode()


# --- the protocol with the standard client --------------------------------------------------------

@pytest.mark.parametrize("binary", [True, False])
def test_tritonclient_infers_like_the_runtime_in_process(served, engines: Path, real_images: np.ndarray, binary: bool) -> None:
    _, url = served
    reference = Runtime(engines).infer(real_images[:5])
    result = infer(url, real_images[:5], binary)
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference.probabilities, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("exit"), reference.exits)
    np.testing.assert_array_equal(result.as_numpy("prediction"), reference.predictions)
    parameters = result.get_response()["parameters"]
    assert parameters["operating_point"] == "full" and parameters["exits"] == ",".join(map(str, reference.exits))


def test_all_outputs_in_binary_when_none_are_named(served, real_images: np.ndarray) -> None:
    _, url = served
    tensor = tritonclient.InferInput("input", [2, *INPUT_SHAPE], "FP32")
    tensor.set_data_from_numpy(real_images[:2])
    result = client(url).infer("digits", [tensor])
    assert result.as_numpy("probabilities").shape == (2, 10) and result.as_numpy("exit").dtype == np.int64


def test_health_and_metadata(served) -> None:
    _, url = served
    c = client(url)
    assert c.is_server_live() and c.is_server_ready() and c.is_model_ready("digits")
    meta = c.get_model_metadata("digits")
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *INPUT_SHAPE]}]
    assert {o["name"] for o in meta["outputs"]} == {"probabilities", "prediction", "exit"}
    assert c.get_server_metadata()["extensions"] == ["binary_tensor_data", "system_shared_memory", "model_repository"]
    with pytest.raises(tritonclient.InferenceServerException, match="unknown model 'nope'"):
        c.get_model_metadata("nope")


def test_a_request_can_ask_for_a_point_or_a_latency_budget(served, real_images: np.ndarray) -> None:
    _, url = served
    eager = infer(url, real_images[:4], parameters={"operating_point": "eager"})
    assert eager.get_response()["parameters"]["operating_point"] == "eager" and (eager.as_numpy("exit") == 0).all()
    budget = infer(url, real_images[:4], parameters={"latency_budget_ms": 2.5})  # late (2.0 ms, 85%) fits, full (3.0) does not
    assert budget.get_response()["parameters"]["operating_point"] == "late"
    with pytest.raises(tritonclient.InferenceServerException, match="no operating point fits 0.5 ms"):
        infer(url, real_images[:1], parameters={"latency_budget_ms": 0.5})


# --- malformed requests: a 4xx each, and the server keeps serving ----------------------------------

def malformed_cases(images: np.ndarray) -> list[tuple[str, str, bytes | None, dict[str, str], int, str]]:
    good = json_request(images)
    binary_header = json.dumps({"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32", "parameters": {"binary_data_size": images.nbytes}}]}).encode()
    return [
        ("POST", "/v2/models/digits/infer", b"{not json", {}, 400, "not valid JSON"),
        ("POST", "/v2/models/digits/infer", b"[1, 2]", {}, 400, "JSON object"),
        ("POST", "/v2/models/digits/infer", json_request(images, name="image"), {}, 400, "takes one input named 'input'"),
        ("POST", "/v2/models/digits/infer", json_request(images.reshape(len(images), 1, 64)), {}, 400, "shape"),
        ("POST", "/v2/models/digits/infer", json_request(images, datatype="INT32"), {}, 400, "must be FP32"),
        ("POST", "/v2/models/digits/infer", json_request(images, datatype="STRING"), {}, 400, "not supported"),
        ("POST", "/v2/models/digits/infer", json_request(images, datatype=[1, 2]), {}, 400, "not supported"),
        ("POST", "/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 1, 8, 8], "datatype": "FP32", "data": [1.0] * 3}]}).encode(), {}, 400, "3 values for shape"),
        ("POST", "/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [1, 1], "datatype": "UINT8", "data": [2**31]}]}).encode(), {}, 400, "numbers in range"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "../../etc/passwd", "byte_size": 4}', {}, 400, "not a shared-memory object name"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b'{"key": "/x", "byte_size": -4}', {}, 400, "non-negative integer"),
        ("GET", "/v2/systemsharedmemory/region/nope/status", None, {}, 404, "no shared-memory region named 'nope'"),
        ("POST", "/v2/repository/models/nope/load", b"", {}, 404, "unknown model 'nope'"),
        ("POST", "/v2/systemsharedmemory/region/r/register", b"[1]", {}, 400, "JSON object"),
        ("POST", "/v2/models/digits/infer", binary_header + images.tobytes()[:-4], {"Inference-Header-Content-Length": str(len(binary_header))}, 400, "binary data ends after"),
        ("POST", "/v2/models/digits/infer", binary_header + images.tobytes() + b"xxxx", {"Inference-Header-Content-Length": str(len(binary_header))}, 400, "add up to"),
        ("POST", "/v2/models/digits/infer", good, {"Inference-Header-Content-Length": "99999999"}, 400, "does not fit"),
        ("POST", "/v2/models/digits/infer", json_request(images, outputs=[{"name": "logits"}]), {}, 400, "unknown outputs ['logits']"),
        ("POST", "/v2/models/digits/infer", json_request(images, parameters={"operating_point": "turbo"}), {}, 400, "no operating point 'turbo'"),
        ("POST", "/v2/models/digits/infer", json_request(images, parameters={"latency_budget_ms": -1}), {}, 400, "positive number"),
        ("POST", "/v2/models/nope/infer", good, {}, 404, "unknown model 'nope'"),
        ("POST", "/v2/models/digits/versions/7/infer", good, {}, 404, "only version 1"),
        ("POST", "/v2/models/digits/infer", b"x" * (2 << 20), {}, 413, "exceeds"),  # read and dropped: the client gets the answer
        ("POST", "/v2/models/digits/infer", good, {"Content-Encoding": "gzip"}, 415, "not supported"),
        ("POST", "/v2/models/digits/infer", b"[" * 100000 + b"]" * 100000, {}, 400, "nests too deeply"),
        ("POST", "/v2/models/digits/infer", json.dumps({"inputs": [{"name": "input", "shape": [2**62, 4, 1, 1], "datatype": "FP32", "data": []}]}).encode(), {}, 400, "elements"),
        ("POST", "/v2/models/digits/infer", json_request(images, outputs=[{"name": "probabilities", "parameters": {"class_count": 3}}]), {}, 400, "class_count"),
        ("GET", "/v2/nothing", None, {}, 404, "no route"),
    ]


def test_every_malformed_request_gets_a_clear_4xx_and_the_server_keeps_serving(engines: Path, real_images: np.ndarray) -> None:
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="none", max_body_bytes=1 << 20))
    host, port = daemon.address
    url = f"{host}:{port}"
    try:
        for method, path, body, headers, status, message in malformed_cases(real_images[:3]):
            got, doc = raw(url, method, path, body, headers)
            assert (got, message in doc.get("error", "")) == (status, True), (path, body[:60] if body else None, got, doc)
        assert raw(url, "GET", "/v2/health/ready")[0] == 200
        np.testing.assert_array_equal(infer(url, real_images[:2]).as_numpy("prediction"), Runtime(engines).infer(real_images[:2]).predictions)
        metrics = scrape(url)
        assert sample(metrics, "edge_requests_total", code="400", model="digits") >= 1
        assert sample(metrics, "edge_request_errors_total", kind="bad_request") >= 1
    finally:
        daemon.stop()


def scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """/metrics read with prometheus-client's own parser: (sample name, labels) -> value."""
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(raw_text(url, "/metrics")) for s in family.samples
    }


def sample(metrics: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    return metrics[(name, frozenset(labels.items()))]


def raw_text(url: str, path: str) -> str:
    host, port = url.split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=30)
    conn.request("GET", path)
    text = conn.getresponse().read().decode()
    conn.close()
    return text


# --- load and overload -------------------------------------------------------------------------------

def test_concurrent_load_loses_nothing_and_answers_each_request_with_its_own_images(served, engines: Path, digits_test) -> None:
    _, url = served
    images = np.ascontiguousarray(digits_test.images[:200], dtype=np.float32)
    expected = Runtime(engines).infer(images[:64]).predictions
    rng = np.random.default_rng(0)
    jobs = [(int(s), int(n)) for s, n in zip(rng.integers(0, 60, 240), rng.integers(1, 5, 240))]

    def one(job: tuple[int, int]) -> bool:
        start, n = job
        got = infer(url, images[start:start + n]).as_numpy("prediction")
        return bool(np.array_equal(got, expected[start:start + n]))

    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(one, jobs))
    assert all(answers)


def test_overload_is_refused_fast_and_what_is_accepted_is_right(engines: Path, real_images: np.ndarray) -> None:
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="none", queue_size=1, max_batch=1))
    host, port = daemon.address
    url = f"{host}:{port}"
    expected = Runtime(engines).infer(real_images[:1]).predictions
    body = json_request(real_images[:1])

    def one(_: int) -> tuple[int, dict[str, Any]]:
        return raw(url, "POST", "/v2/models/digits/infer", body)

    try:
        with ThreadPoolExecutor(32) as pool:
            answers = list(pool.map(one, range(400)))
        statuses = [s for s, _ in answers]
        assert set(statuses) <= {200, 503} and statuses.count(503) > 0 and statuses.count(200) > 0
        assert all("overloaded" in doc["error"] for s, doc in answers if s == 503)
        assert all(doc["outputs"][1]["data"] == expected.tolist() for s, doc in answers if s == 200)
        assert sample(scrape(url), "edge_refusals_total", model="digits") >= 1
    finally:
        daemon.stop()


# --- faults ----------------------------------------------------------------------------------------------

def test_a_sensor_that_dies_mid_run_sends_the_governor_to_the_cheapest_point(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    root = orin_nano(tmp_path)
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="sysfs", sysfs_root=str(root), tick_s=0.05))
    host, port = daemon.address
    url = f"{host}:{port}"
    try:
        assert daemon.governors["digits"].governor.point == "full"
        shutil.rmtree(root / "sys/class/thermal/thermal_zone2")  # the tj sensor is gone
        deadline = threading.Event()
        for _ in range(100):
            if daemon.governors["digits"].governor.point == "eager":
                break
            deadline.wait(0.05)
        status, state = raw(url, "GET", "/v2/edge/governor")
        assert status == 200 and state["digits"]["point"] == "eager" and "sensor lost" in state["digits"]["decisions"][-1]["reason"]
        assert sample(scrape(url), "edge_sensor_up", source="sysfs") == 0
        result = infer(url, real_images[:3])  # still serving, at the cheapest point
        assert result.get_response()["parameters"]["operating_point"] == "eager"
    finally:
        daemon.stop()


def test_an_engine_missing_at_start_leaves_the_server_up_and_the_model_not_ready(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    broken = Path(shutil.copytree(engines, tmp_path / "digits"))
    (broken / "segment_1.onnx").unlink()
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(broken), port=0, sensors="none"))
    host, port = daemon.address
    url = f"{host}:{port}"
    try:
        assert raw(url, "GET", "/v2/health/live")[0] == 200
        assert raw(url, "GET", "/v2/health/ready")[0] == 503
        status, meta = raw(url, "GET", "/v2/models/digits")
        assert status == 200 and meta["ready"] is False and "segment_1.onnx" in meta["reason"]
        status, doc = raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[:1]))
        assert status == 503 and "not ready" in doc["error"] and "segment_1.onnx" in doc["error"]
        assert sample(scrape(url), "edge_model_ready", model="digits") == 0
    finally:
        daemon.stop()


@pytest.mark.parametrize("layout", ["missing", "empty", "a file"])
def test_a_repository_without_models_stops_edged_at_start(tmp_path: Path, layout: str, capsys: pytest.CaptureFixture[str]) -> None:
    repository = tmp_path / "models"
    if layout == "empty":
        (repository / "not-a-model").mkdir(parents=True)
    elif layout == "a file":
        repository.write_text("")
    assert main(["--model-repository", str(repository), "--port", "0", "--grpc-port", "0", "--sensors", "none", "--log-format", "text"]) == 1
    error = capsys.readouterr().err
    expected = {"missing": "does not exist", "empty": "holds no model", "a file": "is not a folder"}[layout]
    assert f"model repository {repository}" in error and expected in error


@pytest.mark.parametrize(("host", "token", "warned"), [("0.0.0.0", False, True), ("0.0.0.0", True, False), ("127.0.0.1", False, False)])
def test_listening_beyond_loopback_without_a_token_is_warned(
    engines: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, host: str, token: bool, warned: bool,
) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    config = DaemonConfig(grpc_port=0, model_repository=str(engines), host=host, port=0, sensors="none", token_file=str(tmp_path / "token") if token else "")
    with caplog.at_level("WARNING", logger="edged"):
        daemon = start(config)
        daemon.stop()
    assert any("without a token" in r.getMessage() for r in caplog.records) == warned


def test_a_corrupt_engine_at_start_leaves_the_server_up_and_says_which_file(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    broken = Path(shutil.copytree(engines, tmp_path / "digits"))
    (broken / "segment_1.onnx").write_bytes(b"not an onnx file")
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(broken), port=0, sensors="none"))
    url = "{}:{}".format(*daemon.address)
    try:
        assert raw(url, "GET", "/v2/health/live")[0] == 200 and raw(url, "GET", "/v2/health/ready")[0] == 503
        status, meta = raw(url, "GET", "/v2/models/digits")
        assert status == 200 and meta["ready"] is False and "segment_1.onnx" in meta["reason"]
        status, doc = raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[:1]))
        assert status == 503 and "segment_1.onnx" in doc["error"]
    finally:
        daemon.stop()


def test_a_repository_of_several_models_serves_each_and_a_broken_one_alone_is_not_ready(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    repository = tmp_path / "models"
    for name in ("first", "second", "broken"):
        shutil.copytree(engines, repository / name)
    (repository / "broken" / "segment_0.onnx").unlink()
    (repository / "notes").mkdir()  # a folder without a manifest is not a model
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(repository), port=0, sensors="none"))
    url = "{}:{}".format(*daemon.address)
    try:
        assert sorted(daemon.models) == ["broken", "first", "second"]
        expected = Runtime(engines).infer(real_images[:2]).predictions
        for name in ("first", "second"):
            status, body = raw(url, "POST", f"/v2/models/{name}/infer", json_request(real_images[:2]))
            predictions = next(o["data"] for o in body["outputs"] if o["name"] == "prediction")
            assert status == 200 and body["model_name"] == name and predictions == expected.tolist()
            assert raw(url, "GET", f"/v2/models/{name}/ready")[0] == 200
        assert raw(url, "GET", "/v2/models/broken/ready")[0] == 503
        assert raw(url, "GET", "/v2/health/ready")[0] == 503  # ready means every model is
    finally:
        daemon.stop()


def test_a_client_that_stalls_mid_body_is_cut_off(engines: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edge.daemon import http as edged_http

    monkeypatch.setattr(edged_http.Handler, "timeout", 1.0)  # the daemon's 10 s, shortened for the test
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="none"))
    try:
        with socket.create_connection(daemon.address, timeout=30) as client:
            client.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"inputs\": [")
            answer = b""
            while chunk := client.recv(4096):  # the server answers, then closes
                answer += chunk
        assert answer.startswith(b"HTTP/1.1 408") and b"did not arrive" in answer and b"Connection: close" in answer
        assert raw("{}:{}".format(*daemon.address), "GET", "/v2/health/ready")[0] == 200  # and goes on serving
    finally:
        daemon.stop()


def test_a_bearer_token_guards_infer_and_admin_but_not_health(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="none", token_file=str(tmp_path / "token")))
    host, port = daemon.address
    url = f"{host}:{port}"
    try:
        assert raw(url, "GET", "/v2/health/ready")[0] == 200
        status, meta = raw(url, "GET", "/v2/models/digits")  # metadata stays open, as health does
        assert status == 200 and meta["inputs"][0]["name"] == "input"
        assert raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[:1]))[0] == 401
        assert raw(url, "GET", "/v2/edge/governor", headers={"Authorization": "Bearer wrong"})[0] == 401
        assert raw(url, "GET", "/metrics")[0] == 401
        assert raw(url, "GET", "/v2/edge/governor", headers={"Authorization": "bearer s3cret"})[0] == 200
        assert raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[:1]), {"Authorization": "Bearer s3cret"})[0] == 200
        result = infer(url, real_images[:1], headers={"Authorization": "Bearer s3cret"})
        assert result.as_numpy("prediction").shape == (1,)
    finally:
        daemon.stop()


# --- config and operations -------------------------------------------------------------------------------

def test_config_file_then_overrides_and_bad_keys(tmp_path: Path) -> None:
    path = tmp_path / "edged.toml"
    path.write_text('port = 9001\nhost = "0.0.0.0"\nmax_batch = 8\n')
    config = load_config(path, {"port": 9100, "host": None})
    assert (config.port, config.host, config.max_batch) == (9100, "0.0.0.0", 8)
    assert load_config(ROOT / "deploy/edged.toml", {}) == DaemonConfig()  # the example file lists every default
    path.write_text("prot = 1\n")
    with pytest.raises(ConfigError, match="unknown keys"):
        load_config(path, {})
    path.write_text('port = "x"\n')
    with pytest.raises(ConfigError, match="port must be int"):
        load_config(path, {})
    with pytest.raises(ConfigError, match="sensors must be"):
        DaemonConfig(sensors="thermometer")


def test_sigterm_answers_queued_requests_then_exits_and_systemd_hears_ready(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    notify_path = str(tmp_path / "notify.sock")
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.bind(notify_path)
    notify.settimeout(120)
    config = tmp_path / "edged.json"
    config.write_text(json.dumps({"model_repository": str(engines), "port": 0, "grpc_port": 0, "sensors": "none", "max_delay_ms": 500.0}))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": notify_path}
    process = subprocess.Popen([sys.executable, "-m", "edge.daemon.main", "--config", str(config)], env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert notify.recv(64) == b"READY=1"
        url = serving_url(process)
        body = json_request(real_images[:2])
        with ThreadPoolExecutor(8) as pool:
            futures = [pool.submit(raw, url, "POST", "/v2/models/digits/infer", body) for _ in range(8)]
            threading.Event().wait(0.3)  # the requests wait in the queue (500 ms batching delay)
            process.send_signal(signal.SIGTERM)
            answers = [f.result() for f in futures]
        assert process.wait(60) == 0
        assert notify.recv(64) == b"STOPPING=1"
        assert all(status == 200 for status, _ in answers), [s for s, _ in answers]
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]
        notify.close()


def test_a_body_without_a_length_closes_the_connection_so_it_cannot_desync_the_next(served, real_images: np.ndarray) -> None:
    _, url = served
    host, port = url.split(":")
    with socket.create_connection((host, int(port)), timeout=30) as sock:
        body = json_request(real_images[:1])
        sock.sendall(b"POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + f"{len(body):x}\r\n".encode() + body + b"\r\n0\r\n\r\n")
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    assert reply.startswith(b"HTTP/1.1 411") and b"Connection: close" in reply and reply.count(b"HTTP/1.1") == 1


def test_batches_never_exceed_the_engines_maximum_batch(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    small = Path(shutil.copytree(engines, tmp_path / "digits"))
    manifest = load_manifest(small)
    save_manifest(dataclasses.replace(manifest, batch={**manifest.batch, "max": 4}), small / "manifest.json")
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(small), port=0, sensors="none", max_batch=16, max_delay_ms=100.0))
    host, port = daemon.address
    url = f"{host}:{port}"
    try:
        with ThreadPoolExecutor(6) as pool:
            answers = list(pool.map(lambda i: raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[2 * i:2 * i + 2])), range(6)))
        assert [s for s, _ in answers] == [200] * 6
        metrics = scrape(url)
        batches = sample(metrics, "edge_batch_size_count")
        assert sample(metrics, "edge_batch_size_bucket", le="4.0") == batches  # never above the engines' limit
        assert sample(metrics, "edge_batch_size_bucket", le="2.0") < batches  # some batches joined requests
    finally:
        daemon.stop()


def test_a_request_that_waits_past_its_timeout_gets_504(engines: Path, real_images: np.ndarray) -> None:
    daemon = start(DaemonConfig(grpc_port=0, model_repository=str(engines), port=0, sensors="none", request_timeout_s=0.05, max_delay_ms=300.0))
    host, port = daemon.address
    try:
        status, doc = raw(f"{host}:{port}", "POST", "/v2/models/digits/infer", json_request(real_images[:1]))
        assert status == 504 and "timed out" in doc["error"]
    finally:
        daemon.stop()


def test_metrics_follow_the_prometheus_text_format(served, real_images: np.ndarray) -> None:
    _, url = served
    infer(url, real_images[:3])
    text = raw_text(url, "/metrics")
    line_format = re.compile(r'^[a-zA-Z_:][a-zA-Z0-9_:]*(\{([a-zA-Z_][a-zA-Z0-9_]*="[^"\n]*",?)*\})? (-?[0-9.]+([eE][+-]?[0-9]+)?|NaN|[+-]Inf)$')  # 9.9e-05 too
    for line in text.strip().splitlines():
        assert line.startswith(("# HELP ", "# TYPE ")) or line_format.match(line), line
    metrics = scrape(url)
    assert sample(metrics, "edge_operating_point", model="digits", point="full") == 1
    assert sample(metrics, "edge_sensor_temperature_celsius", zone="tj") == pytest.approx(52.1)
    exits = {dict(labels)["exit"]: v for (name, labels), v in metrics.items() if name == "edge_exits_total"}
    assert sum(exits.values()) == 3 and set(exits) <= {"0", "1", "2"}


def test_the_runtime_install_has_no_torch_and_serves_a_manifest(engines: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    """What a device installs: `pip install edge-dynamic` (numpy, onnx, onnxruntime), no
    torch; edged from that venv serves the manifest."""
    venv, source = tmp_path / "venv", tmp_path / "source"  # a copy: building in place would leave build/ in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    for package in ("edge", "engines", "calibration", "tools"):
        shutil.copytree(ROOT / package, source / package, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    install = subprocess.run([str(venv / "bin" / "pip"), "install", "-q", str(source)], capture_output=True, text=True, timeout=600)
    assert install.returncode == 0, install.stderr[-2000:]
    python = str(venv / "bin" / "python")
    probe = subprocess.run([python, "-c", "import torch"], capture_output=True, text=True, cwd=tmp_path)
    assert "No module named 'torch'" in probe.stderr
    check = subprocess.run([str(venv / "bin" / "edge-device-check"), "--engines", str(engines)], capture_output=True, text=True, cwd=tmp_path)
    assert check.returncode == 1 and check.stderr.startswith("error: TensorRT is not installed"), check.stderr  # imports, then says what is missing
    command = [str(venv / "bin" / "edged"), "--model-repository", str(engines), "--port", "0", "--grpc-port", "0", "--sensors", "none"]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, cwd=tmp_path, env={"PATH": os.environ.get("PATH", "")})
    try:
        url = serving_url(process)
        status, body = raw(url, "POST", "/v2/models/digits/infer", json_request(real_images[:2]))
        assert status == 200, body
        served = next(np.array(o["data"], dtype=np.float32).reshape(o["shape"]) for o in body["outputs"] if o["name"] == "probabilities")
        expected = Runtime(engines).infer(real_images[:2]).probabilities
        np.testing.assert_allclose(served, expected, atol=1e-5)
        process.send_signal(signal.SIGTERM)
        assert process.wait(60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        process.stderr.close()  # type: ignore[union-attr]
