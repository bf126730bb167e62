"""edged for clients on the same board: tritonclient.grpc against the gRPC endpoint, and
Triton's system shared-memory extension over HTTP and gRPC (regions made with
tritonclient.utils.shared_memory), with the faults a region can meet; model reload with
an engine file gone; one flooding client against the others."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from tritonclient.grpc import service_pb2, service_pb2_grpc

from edge.daemon.config import DaemonConfig
from edge.daemon.main import Daemon
from edge.runtime import Runtime

httpclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the 'test' extra) is not installed")
shm = pytest.importorskip("tritonclient.utils.shared_memory", reason="tritonclient's shared-memory utilities are not installed")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="no /dev/shm: POSIX shared memory is Linux's here")
OUTPUTS = ("probabilities", "exit", "prediction")


@pytest.fixture
def daemon(built_copy: Path) -> Iterator[Daemon]:
    daemon = Daemon(DaemonConfig(model_repository=str(built_copy), port=0, grpc_port=0, sensors="none"))
    daemon.start()
    yield daemon
    daemon.stop()


def urls(daemon: Daemon) -> tuple[str, str]:
    host, port = daemon.address
    assert daemon.grpc is not None
    return f"{host}:{port}", f"{host}:{daemon.grpc.port}"


def grpc_input(images: np.ndarray) -> Any:
    tensor = grpcclient.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return tensor


def grpc_infer(url: str, images: np.ndarray, **kw: Any) -> Any:
    outputs = [grpcclient.InferRequestedOutput(n) for n in OUTPUTS]
    return grpcclient.InferenceServerClient(url).infer("engines", [grpc_input(images)], outputs=outputs, **kw)


def assert_same(result: Any, reference: Any) -> None:
    np.testing.assert_allclose(result.as_numpy("probabilities"), reference.probabilities, atol=1e-6)
    np.testing.assert_array_equal(result.as_numpy("exit"), reference.exits)
    np.testing.assert_array_equal(result.as_numpy("prediction"), reference.predictions)


def grpc_code(exc: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(exc.value.status())


# --- gRPC ----------------------------------------------------------------------------------------

def test_tritonclient_grpc_infers_like_the_runtime_in_process(daemon: Daemon, built_copy: Path, real_images: np.ndarray) -> None:
    _, url = urls(daemon)
    reference = Runtime(built_copy).infer(real_images[:5])
    result = grpc_infer(url, real_images[:5])
    assert_same(result, reference)
    parameters = result.get_response(as_json=True)["parameters"]
    assert parameters["operating_point"]["string_param"] == reference.operating_point
    assert parameters["exits"]["string_param"] == ",".join(map(str, reference.exits))


def test_grpc_health_metadata_points_and_budgets(daemon: Daemon, built_copy: Path, real_images: np.ndarray) -> None:
    _, url = urls(daemon)
    client = grpcclient.InferenceServerClient(url)
    assert client.is_server_live() and client.is_server_ready() and client.is_model_ready("engines")
    meta = client.get_model_metadata("engines", as_json=True)
    assert meta["inputs"][0]["name"] == "input" and {o["name"] for o in meta["outputs"]} == set(OUTPUTS)
    assert "system_shared_memory" in client.get_server_metadata(as_json=True)["extensions"]
    eager = Runtime(built_copy, operating_point="eager").infer(real_images[:4])
    result = grpc_infer(url, real_images[:4], parameters={"operating_point": "eager"})
    assert_same(result, eager)
    assert result.get_response(as_json=True)["parameters"]["operating_point"]["string_param"] == "eager"


def test_grpc_typed_contents_are_read_like_raw_bytes(daemon: Daemon, built_copy: Path, real_images: np.ndarray) -> None:
    """A client that fills contents.fp32_contents instead of raw_input_contents (the KServe
    default) gets the same answer."""
    _, url = urls(daemon)
    images = real_images[:2]
    request = service_pb2.ModelInferRequest(model_name="engines")
    tensor = request.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
    tensor.contents.fp32_contents.extend(images.ravel().tolist())
    with grpc.insecure_channel(url) as channel:
        response = service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    probabilities = next(np.frombuffer(raw, np.float32) for out, raw in zip(response.outputs, response.raw_output_contents) if out.name == "probabilities")
    np.testing.assert_allclose(probabilities.reshape(2, -1), Runtime(built_copy).infer(images).probabilities, atol=1e-6)


@pytest.mark.parametrize(("case", "code"), [
    ("unknown model", "NOT_FOUND"), ("wrong shape", "INVALID_ARGUMENT"), ("unknown point", "INVALID_ARGUMENT"), ("short raw bytes", "INVALID_ARGUMENT"),
])
def test_bad_grpc_requests_get_the_matching_code_and_the_server_keeps_serving(daemon: Daemon, real_images: np.ndarray, case: str, code: str) -> None:
    _, url = urls(daemon)
    images = real_images[:1]
    request = service_pb2.ModelInferRequest(model_name="nope" if case == "unknown model" else "engines")
    shape = [1, 8, 4] if case == "wrong shape" else list(images.shape)
    request.inputs.add(name="input", datatype="FP32", shape=shape)
    raw = images.tobytes()
    request.raw_input_contents.append(raw[:-4] if case == "short raw bytes" else raw[: 4 * int(np.prod(shape))])
    if case == "unknown point":
        request.parameters["operating_point"].string_param = "warp"
    with grpc.insecure_channel(url) as channel, pytest.raises(grpc.RpcError) as failed:
        service_pb2_grpc.GRPCInferenceServiceStub(channel).ModelInfer(request)
    assert failed.value.code().name == code and failed.value.details()
    assert grpc_infer(url, images).as_numpy("prediction").shape == (1,)


def test_a_grpc_timeout_that_is_not_a_positive_number_is_no_timeout(daemon: Daemon, real_images: np.ndarray) -> None:
    """As over HTTP (found by edge-fuzz: a bool timeout was read as 1 microsecond)."""
    _, url = urls(daemon)
    images = real_images[:1]
    request = service_pb2.ModelInferRequest(model_name="engines")
    request.inputs.add(name="input", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.tobytes())
    with grpc.insecure_channel(url) as channel:
        stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
        for kind, value in (("bool_param", True), ("string_param", "1"), ("int64_param", -5)):
            request.parameters["timeout"].Clear()
            setattr(request.parameters["timeout"], kind, value)
            assert len(stub.ModelInfer(request).raw_output_contents) == 3
        request.parameters["timeout"].int64_param = 1  # a real one, too short: its own deadline
        with pytest.raises(grpc.RpcError) as late:
            stub.ModelInfer(request)
    assert late.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED


def test_grpc_takes_the_same_bearer_token_as_http(built_copy: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    (tmp_path / "token").write_text("s3cret\n")
    daemon = Daemon(DaemonConfig(model_repository=str(built_copy), port=0, grpc_port=0, sensors="none", token_file=str(tmp_path / "token")))
    daemon.start()
    try:
        _, url = urls(daemon)
        assert grpcclient.InferenceServerClient(url).is_server_live()  # health needs no token
        with pytest.raises(InferenceServerException) as refused:
            grpc_infer(url, real_images[:1])
        assert "UNAUTHENTICATED" in grpc_code(refused)
        with pytest.raises(InferenceServerException) as wrong:
            grpc_infer(url, real_images[:1], headers={"authorization": "Bearer s3cre"})
        assert "UNAUTHENTICATED" in grpc_code(wrong)
        grpc_client, http_client = grpcclient.InferenceServerClient(url), httpclient.InferenceServerClient(urls(daemon)[0])
        for call in (lambda c: c.register_system_shared_memory("r", "/edge-test-absent", 16), lambda c: c.get_system_shared_memory_status(),
                     lambda c: c.unregister_system_shared_memory(), lambda c: c.load_model("engines")):
            with pytest.raises(InferenceServerException) as admin:
                call(grpc_client)
            assert "UNAUTHENTICATED" in grpc_code(admin)
            with pytest.raises(InferenceServerException, match="bearer token"):
                call(http_client)
        assert grpc_infer(url, real_images[:1], headers={"authorization": "Bearer s3cret"}).as_numpy("exit").shape == (1,)
    finally:
        daemon.stop()


# --- system shared memory ---------------------------------------------------------------------------

@pytest.fixture
def region() -> Iterator[tuple[str, Any, int]]:
    """A region made the way a Triton client makes one: (key, handle, byte size)."""
    key = f"/edge-test-{uuid.uuid4().hex[:8]}"
    size = 4096
    handle = shm.create_shared_memory_region("frames", key, size)
    yield key, handle, size
    shm.destroy_shared_memory_region(handle)


@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inputs_and_outputs_in_shared_memory_answer_like_the_runtime(daemon: Daemon, built_copy: Path, real_images: np.ndarray, region, protocol: str) -> None:
    key, handle, size = region
    http_url, grpc_url = urls(daemon)
    lib = httpclient if protocol == "http" else grpcclient
    client = lib.InferenceServerClient(http_url if protocol == "http" else grpc_url)
    images = real_images[:3]
    shm.set_shared_memory_region(handle, [images])
    client.register_system_shared_memory("frames", key, size)
    tensor = lib.InferInput("input", list(images.shape), "FP32")
    tensor.set_shared_memory("frames", images.nbytes)
    out_offset = images.nbytes
    probabilities = lib.InferRequestedOutput("probabilities")
    probabilities.set_shared_memory("frames", 3 * 10 * 4, offset=out_offset)
    result = client.infer("engines", [tensor], outputs=[probabilities, lib.InferRequestedOutput("exit")])
    reference = Runtime(built_copy).infer(images)
    np.testing.assert_array_equal(result.as_numpy("exit"), reference.exits)
    written = shm.get_contents_as_numpy(handle, np.float32, [3, 10], offset=out_offset)
    np.testing.assert_allclose(written, reference.probabilities, atol=1e-6)
    status = client.get_system_shared_memory_status(as_json=True) if protocol == "grpc" else client.get_system_shared_memory_status()
    assert "frames" in str(status) and key in str(status)
    client.unregister_system_shared_memory("frames")
    assert len(daemon.app.shm) == 0


def http_shm_infer(url: str, images_shape: list[int], byte_size: int, offset: int = 0) -> Any:
    tensor = httpclient.InferInput("input", images_shape, "FP32")
    tensor.set_shared_memory("frames", byte_size, offset=offset)
    return httpclient.InferenceServerClient(url).infer("engines", [tensor])


def test_a_region_that_is_overrun_shrinks_vanishes_or_is_unregistered_fails_that_request_only(daemon: Daemon, real_images: np.ndarray, region) -> None:
    key, handle, size = region
    url, _ = urls(daemon)
    client = httpclient.InferenceServerClient(url)
    images = real_images[:2]
    shm.set_shared_memory_region(handle, [images])
    client.register_system_shared_memory("frames", key, size)
    shape = list(images.shape)
    with pytest.raises(InferenceServerException, match="run past region"):
        http_shm_infer(url, shape, images.nbytes, offset=size - 100)
    with pytest.raises(InferenceServerException, match="takes 512 bytes"):
        http_shm_infer(url, shape, images.nbytes - 4)
    fd = os.open(f"/dev/shm/{key.lstrip('/')}", os.O_RDWR)
    os.ftruncate(fd, 256)  # the client shrinks its object under the daemon
    with pytest.raises(InferenceServerException, match="shrank to 256 bytes"):
        http_shm_infer(url, shape, images.nbytes)
    os.ftruncate(fd, size)
    os.close(fd)
    assert http_shm_infer(url, shape, images.nbytes).as_numpy("prediction").shape == (2,)
    os.unlink(f"/dev/shm/{key.lstrip('/')}")  # the client's object is gone (shm_unlink)
    with pytest.raises(InferenceServerException, match="no longer exists"):
        http_shm_infer(url, shape, images.nbytes)
    fresh = shm.create_shared_memory_region("again", key, size)  # the same key, another object
    try:
        with pytest.raises(InferenceServerException, match="was replaced"):
            http_shm_infer(url, shape, images.nbytes)
    finally:
        shm.destroy_shared_memory_region(fresh)
    client.unregister_system_shared_memory("frames")
    with pytest.raises(InferenceServerException, match="no shared-memory region named 'frames'"):
        http_shm_infer(url, shape, images.nbytes)
    assert client.infer("engines", [_plain(images)]).as_numpy("prediction").shape == (2,)


def _plain(images: np.ndarray) -> Any:
    tensor = httpclient.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    return tensor


@pytest.mark.parametrize(("kind", "message"), [
    ("path", "not a shared-memory object name"), ("absent", "No such file"), ("symlink", "symbolic link"), ("fifo", "not a regular memory object"),
])
def test_only_shared_memory_objects_can_be_registered(daemon: Daemon, kind: str, message: str) -> None:
    url, _ = urls(daemon)
    name = f"edge-test-{kind}-{uuid.uuid4().hex[:8]}"
    made = Path("/dev/shm") / name
    if kind == "symlink":
        made.symlink_to("/etc/hostname")
    if kind == "fifo":
        os.mkfifo(made)
    try:
        key = "/../../etc/passwd" if kind == "path" else f"/{name}"
        with pytest.raises(InferenceServerException, match=message):
            httpclient.InferenceServerClient(url).register_system_shared_memory("r", key, 16)
    finally:
        made.unlink(missing_ok=True)
    assert len(daemon.app.shm) == 0


def test_a_region_larger_than_its_object_is_refused_and_a_name_is_registered_once(daemon: Daemon, region) -> None:
    key, _, size = region
    url, grpc_url = urls(daemon)
    client = httpclient.InferenceServerClient(url)
    with pytest.raises(InferenceServerException, match=f"holds {size} bytes; the region needs {size + 1}"):
        client.register_system_shared_memory("frames", key, size + 1)
    client.register_system_shared_memory("frames", key, size)
    with pytest.raises(InferenceServerException) as twice:
        grpcclient.InferenceServerClient(grpc_url).register_system_shared_memory("frames", key, size)
    assert "INVALID_ARGUMENT" in grpc_code(twice) and "already registered" in str(twice.value)


def test_shutdown_unregisters_every_region(built_copy: Path, region) -> None:
    key, _, size = region
    daemon = Daemon(DaemonConfig(model_repository=str(built_copy), port=0, grpc_port=0, sensors="none"))
    daemon.start()
    url, _ = urls(daemon)
    try:
        httpclient.InferenceServerClient(url).register_system_shared_memory("frames", key, size)
        held = opened(key)  # the client's handle and the daemon's
    finally:
        daemon.stop()
    assert len(daemon.app.shm) == 0 and opened(key) == held - 1


def opened(key: str) -> int:
    """Descriptors of this process open on the shared-memory object `key`."""
    target = f"/dev/shm/{key.lstrip('/')}"
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd) == target) if fds.is_dir() else 0


# --- reload, flood -------------------------------------------------------------------------------

def test_an_engine_deleted_on_disk_keeps_serving_and_a_reload_refuses_with_the_reason(daemon: Daemon, built_copy: Path, real_images: np.ndarray) -> None:
    url, grpc_url = urls(daemon)
    segment = sorted(built_copy.glob("*.onnx"))[0]
    saved = segment.read_bytes()
    segment.unlink()
    client = httpclient.InferenceServerClient(url)
    assert client.infer("engines", [_plain(real_images[:2])]).as_numpy("prediction").shape == (2,)
    with pytest.raises(InferenceServerException, match=f"not reloaded, still serving.*{segment.name}"):
        client.load_model("engines")
    segment.write_bytes(b"not an onnx file")
    with pytest.raises(InferenceServerException) as corrupt:
        grpcclient.InferenceServerClient(grpc_url).load_model("engines")
    assert "INVALID_ARGUMENT" in grpc_code(corrupt) and segment.name in str(corrupt.value)
    assert daemon.models["engines"].ready and grpc_infer(grpc_url, real_images[:2]).as_numpy("exit").shape == (2,)
    segment.write_bytes(saved)
    before = daemon.models["engines"].runtime
    client.load_model("engines")
    assert daemon.models["engines"].runtime is not before  # loaded again, not kept
    reference = Runtime(built_copy).infer(real_images[:3])
    np.testing.assert_array_equal(client.infer("engines", [_plain(real_images[:3])]).as_numpy("prediction"), reference.predictions)


def test_a_model_whose_engines_were_missing_at_start_serves_once_reloaded(built_copy: Path, real_images: np.ndarray) -> None:
    segment = sorted(built_copy.glob("segment_*.onnx"))[0]
    saved = segment.read_bytes()
    segment.unlink()
    daemon = Daemon(DaemonConfig(model_repository=str(built_copy), port=0, grpc_port=0, sensors="none"))
    daemon.start()
    try:
        url, _ = urls(daemon)
        client = httpclient.InferenceServerClient(url)
        assert not client.is_model_ready("engines")
        with pytest.raises(InferenceServerException, match="not ready"):
            client.infer("engines", [_plain(real_images[:1])])
        segment.write_bytes(saved)
        client.load_model("engines")
        assert client.is_model_ready("engines")  # a batcher started for it
        reference = Runtime(built_copy).infer(real_images[:2])
        np.testing.assert_array_equal(client.infer("engines", [_plain(real_images[:2])]).as_numpy("prediction"), reference.predictions)
    finally:
        daemon.stop()


def test_a_flooding_client_is_refused_at_its_share_and_the_others_are_answered(
    built_copy: Path, real_images: np.ndarray, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One gRPC channel sends more than the whole queue holds while the engines are held
    busy: it gets its share (4) and is refused the rest at once; another client still gets
    in; once the engines run, everything admitted is answered and the share is free again."""
    daemon = Daemon(DaemonConfig(model_repository=str(built_copy), port=0, grpc_port=0, sensors="none", queue_size=16, client_queue_share=4, max_batch=1))
    model = daemon.models["engines"]
    assert model.runtime is not None
    gate, infer = threading.Event(), model.runtime.infer
    monkeypatch.setattr(model.runtime, "infer", lambda *a, **k: gate.wait(30) and infer(*a, **k))  # the real engines, held
    daemon.start()
    try:
        url, grpc_url = urls(daemon)
        flooder = grpcclient.InferenceServerClient(grpc_url)
        outcomes: list[str] = []
        for _ in range(20):  # more than the whole queue: without the share, it would be full
            flooder.async_infer("engines", [grpc_input(real_images[:1])], lambda result, error: outcomes.append("ok" if error is None else str(error)))
        deadline = time.monotonic() + 30
        while len(outcomes) < 16 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(outcomes) == 16 and all("already has 4 requests waiting" in o for o in outcomes), outcomes[:3]  # refused with the engines held
        with ThreadPoolExecutor(1) as pool:
            other = pool.submit(lambda: httpclient.InferenceServerClient(url).infer("engines", [_plain(real_images[1:2])]))
            time.sleep(0.2)
            gate.set()
            assert other.result(30).as_numpy("prediction").shape == (1,)  # admitted beside the flood
        while len(outcomes) < 20 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert outcomes[16:] == ["ok"] * 4
        assert grpc_infer(grpc_url, real_images[:1]).as_numpy("exit").shape == (1,)  # its share was given back
        flooder.close()
    finally:
        gate.set()
        daemon.stop()
