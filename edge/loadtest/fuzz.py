"""Property-based fuzzing of edged (`edge-fuzz`): requests generated with hypothesis over
four channels, each sent to edged in its own process, each answer checked to be a 2xx or
a 4xx (over gRPC: OK or a caller's-fault code), never a server error or a hang (a 504 is
the answer only to a request that set its own `timeout`); then the server must still be
alive and answer a well-formed request correctly.

  http_json    infer bodies: well-formed ones with fields replaced by anything JSON can
               hold, and arbitrary JSON; the model and version in the path vary too
  http_binary  a JSON header and raw tensor bytes whose sizes and header length disagree
               in every way
  grpc         ModelInferRequest messages: typed contents, raw contents, parameters of
               every kind, shapes and names that do not fit
  shm          registrations (real objects, missing ones, paths out of the folder, sizes
               past the object), status, unregistration, and inferences that name
               regions, offsets and sizes at random, over HTTP and gRPC

Generation only (no shrinking): a failing case is reported as sent.
"""

from __future__ import annotations

import http.client
import json
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.atomic import write_json_atomic
from edge.deps import require
from edge.loadtest.process import Edged, start_edged
from edge.manifest import load_manifest

CHANNELS = ("http_json", "http_binary", "grpc", "shm")
DATATYPES = ["FP32", "FP16", "FP64", "INT64", "INT32", "INT8", "UINT8", "BYTES", "BOOL", "fp32", ""]
GRPC_FINE = {"OK", "INVALID_ARGUMENT", "NOT_FOUND", "UNAUTHENTICATED", "RESOURCE_EXHAUSTED", "OUT_OF_RANGE", "FAILED_PRECONDITION"}
GRPC_FIELDS = ("model", "version", "inputs", "raw", "outputs", "parameters", "id")
SHM_OBJECTS = 2  # real shared-memory objects the fuzzer makes, to register in every way


@dataclass
class Outcomes:
    """Statuses seen per channel; the cases that got a server error (a few kept)."""

    statuses: dict[str, Counter[str]] = field(default_factory=lambda: {c: Counter() for c in CHANNELS})
    failures: list[dict[str, Any]] = field(default_factory=list)

    def note(self, channel: str, status: str, fine: bool, case: Any) -> None:
        self.statuses[channel][status] += 1
        if not fine:
            self.failures.append({"channel": channel, "status": status, "case": repr(case)[:600]})


class Target:
    """edged under fuzz: its addresses, the model's input shape, the fuzzer's shm objects."""

    def __init__(self, edged: Edged, input_shape: tuple[int, ...], shm_objects: list[tuple[str, int]]) -> None:
        self.edged, self.input_shape, self.shm_objects = edged, input_shape, shm_objects
        host, port = edged.http.rsplit(":", 1)
        self.http = http.client.HTTPConnection(host, int(port), timeout=30)
        grpc = require("grpc", "test", "fuzzing gRPC")
        self.channel = grpc.insecure_channel(edged.grpc)
        pb_grpc = require("tritonclient.grpc.service_pb2_grpc", "test", "fuzzing gRPC")
        self.stub = pb_grpc.GRPCInferenceServiceStub(self.channel)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None, method: str = "POST") -> int:
        """The status of one HTTP request (a new connection if the server closed the last)."""
        for attempt in range(2):
            try:
                self.http.request(method, path, body=body, headers={"Content-Length": str(len(body)), **(headers or {})})
                response = self.http.getresponse()
                response.read()
                if response.getheader("Connection", "").lower() == "close":
                    self.http.close()
                return response.status
            except (http.client.HTTPException, ConnectionError):
                self.http.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def grpc_call(self, method: str, message: Any) -> str:
        grpc = require("grpc", "test", "fuzzing gRPC")
        try:
            getattr(self.stub, method)(message, timeout=30)
            return "OK"
        except grpc.RpcError as exc:
            return str(exc.code().name)


# --- strategies ----------------------------------------------------------------------------------

def _st() -> Any:
    return require("hypothesis.strategies", "test", "edge-fuzz")


def anything() -> Any:
    st = _st()
    leaves = st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.floats(allow_nan=True) | st.text(max_size=20)
    return st.recursive(leaves, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4), max_leaves=12)


def shapes(input_shape: tuple[int, ...]) -> Any:
    st = _st()
    good = st.integers(0, 3).map(lambda n: [n, *input_shape])
    return good | st.lists(st.integers(-3, 70), max_size=5) | anything()


def parameters() -> Any:
    st = _st()
    known = st.sampled_from(["operating_point", "latency_budget_ms", "timeout", "binary_data_output", "binary_data_size", "shared_memory_region",
                             "shared_memory_byte_size", "shared_memory_offset", "binary_data", "class_count", "priority"])
    values = st.sampled_from(["full", "eager", "late", "balanced", "nope", "frames"]) | st.integers(-5, 2**40) | st.floats() | st.booleans() | st.none()
    return st.dictionaries(known | st.text(max_size=8), values | anything(), max_size=4)


def valid_docs(input_shape: tuple[int, ...], points: list[str]) -> Any:
    """Well-formed JSON infer bodies: 1-3 images, a point or not, some outputs named."""
    st = _st()

    def doc(rows: int, seed: int, point: str | None, outputs: list[str]) -> dict[str, Any]:
        images = np.random.default_rng(seed).random((rows, *input_shape), dtype=np.float32)
        body: dict[str, Any] = {"inputs": [{"name": "input", "shape": list(images.shape), "datatype": "FP32", "data": images.ravel().tolist()}]}
        if point is not None:
            body["parameters"] = {"operating_point": point}
        if outputs:
            body["outputs"] = [{"name": name} for name in outputs]
        return body
    return st.builds(doc, st.integers(1, 3), st.integers(0, 1 << 16), st.none() | st.sampled_from(points),
                     st.lists(st.sampled_from(["probabilities", "prediction", "exit"]), max_size=3, unique=True))


MUTABLE = [("inputs",), ("inputs", 0, "name"), ("inputs", 0, "shape"), ("inputs", 0, "datatype"), ("inputs", 0, "data"), ("inputs", 0, "parameters"),
           ("outputs",), ("parameters",), ("parameters", "operating_point"), ("parameters", "latency_budget_ms"), ("parameters", "timeout"), ("id",)]


def mutated(doc: dict[str, Any], path: tuple[Any, ...], value: Any) -> dict[str, Any]:
    """The doc with the field at `path` replaced (made where missing)."""
    node: Any = doc
    for key in path[:-1]:
        if isinstance(node, list):
            node = node[0] if node else node
        else:
            node = node.setdefault(key, {})
    if isinstance(node, dict):
        node[path[-1]] = value
    return doc


def infer_docs(input_shape: tuple[int, ...], points: list[str]) -> Any:
    """JSON infer bodies: well-formed ones, ones with one field replaced by anything, and
    anything at all."""
    st = _st()
    count = int(np.prod(input_shape))

    def tensor(shape: Any, datatype: Any, data: Any, params: Any, name: Any) -> dict[str, Any]:
        entry = {"name": name, "shape": shape, "datatype": datatype, "data": data}
        if params:
            entry["parameters"] = params
        return {k: v for k, v in entry.items() if v is not None}
    data = st.integers(0, 2).flatmap(lambda n: st.lists(st.floats(0, 1, width=32), min_size=n * count, max_size=n * count)) | anything()
    inputs = st.builds(tensor, shapes(input_shape), st.sampled_from(DATATYPES), data, parameters(), st.sampled_from(["input", "x", ""]) | anything())
    outputs = st.lists(st.fixed_dictionaries({"name": st.sampled_from(["probabilities", "prediction", "exit", "logits"]) | anything()},
                                             optional={"parameters": parameters()}), max_size=3)
    loose = st.fixed_dictionaries({"inputs": st.lists(inputs, max_size=3) | anything()}, optional={"outputs": outputs | anything(), "parameters": parameters(), "id": anything()})
    one_field = st.builds(mutated, valid_docs(input_shape, points), st.sampled_from(MUTABLE), anything() | shapes(input_shape) | st.sampled_from(DATATYPES))
    return valid_docs(input_shape, points) | one_field | one_field | loose | anything()


def infer_paths(model: str) -> Any:
    st = _st()
    return st.sampled_from([f"/v2/models/{model}/infer"] * 12 + [f"/v2/models/{model}/versions/1/infer", f"/v2/models/{model}/versions/7/infer",
                                                                 "/v2/models/nope/infer", f"/v2/models/{model}", "/v2/models//infer", "/v2/infer"])


def binary_cases(input_shape: tuple[int, ...]) -> Any:
    """(header doc, raw bytes, header-length header): sizes agree, or do not."""
    st = _st()
    nbytes = int(np.prod(input_shape)) * 4

    def case(rows: int, declared: Any, extra: int, datatype: str, length_kind: str, garbage: bytes) -> tuple[dict[str, Any], bytes, str | None]:
        doc = {"inputs": [{"name": "input", "shape": [rows, *input_shape], "datatype": datatype, "parameters": {"binary_data_size": declared}}],
               "parameters": {"binary_data_output": True}}
        raw = np.random.default_rng(rows).random(rows * nbytes // 4, dtype=np.float32).tobytes()[: max(0, rows * nbytes + extra)] + garbage
        return doc, raw, length_kind
    declared = st.just("exact") | st.just("exact") | st.integers(-10, 10 * nbytes) | anything()
    extra = st.just(0) | st.integers(-nbytes, 64)
    garbage = st.just(b"") | st.binary(max_size=32)
    return st.builds(case, st.integers(0, 3), declared, extra, st.sampled_from(["FP32"] * 6 + DATATYPES),
                     st.sampled_from(["exact"] * 6 + ["short", "long", "garbage", "none"]), garbage)


def infer_parameters() -> Any:
    """InferParameter values: a (oneof field, value) pair."""
    st = _st()
    return st.one_of(st.tuples(st.just("bool_param"), st.booleans()), st.tuples(st.just("int64_param"), st.integers(-(2**63), 2**63 - 1)),
                     st.tuples(st.just("string_param"), st.text(max_size=16) | st.sampled_from(["full", "eager", "balanced", "frames"])),
                     st.tuples(st.just("double_param"), st.floats()), st.tuples(st.just("uint64_param"), st.integers(0, 2**64 - 1)))


def grpc_requests(model: str, input_shape: tuple[int, ...], points: list[str]) -> Any:
    """ModelInferRequest fields: well-formed, one field from a random request, or all random."""
    st = _st()
    count = int(np.prod(input_shape))
    params = st.dictionaries(st.sampled_from(["operating_point", "latency_budget_ms", "timeout", "shared_memory_region", "shared_memory_byte_size",
                                              "shared_memory_offset", "class_count"]) | st.text(max_size=8), infer_parameters(), max_size=3)
    tensor = st.fixed_dictionaries({
        "name": st.sampled_from(["input", "x", ""]), "datatype": st.sampled_from(DATATYPES),
        "shape": st.integers(0, 3).map(lambda n: [n, *input_shape]) | st.lists(st.integers(-(2**40), 2**40), max_size=5),
        "parameters": params, "fp32": st.integers(0, 2).flatmap(lambda n: st.lists(st.floats(width=32), min_size=n * count, max_size=n * count)),
        "int64": st.lists(st.integers(-(2**63), 2**63 - 1), max_size=8),
    })
    raw = st.lists(st.integers(0, 3).map(lambda n: np.zeros(n * count, np.float32).tobytes()) | st.binary(max_size=64), max_size=3)
    outputs = st.lists(st.tuples(st.sampled_from(["probabilities", "prediction", "exit", "nope"]), params), max_size=3)
    loose = st.fixed_dictionaries({"model": st.sampled_from([model] * 10 + ["nope", ""]), "version": st.sampled_from(["", "", "", "1", "2"]),
                                   "inputs": st.lists(tensor, max_size=3), "raw": raw, "outputs": outputs, "parameters": params, "id": st.text(max_size=8)})

    def valid(rows: int, seed: int, point: str | None, raw_bytes: bool) -> dict[str, Any]:
        images = np.random.default_rng(seed).random((rows, *input_shape), dtype=np.float32)
        spec = {"name": "input", "datatype": "FP32", "shape": list(images.shape), "parameters": {}, "fp32": [] if raw_bytes else images.ravel().tolist(), "int64": []}
        return {"model": model, "version": "", "inputs": [spec], "raw": [images.tobytes()] if raw_bytes else [], "outputs": [], "id": "",
                "parameters": {} if point is None else {"operating_point": ("string_param", point)}}
    well_formed = st.builds(valid, st.integers(1, 3), st.integers(0, 1 << 16), st.none() | st.sampled_from(points), st.booleans())
    one_field = st.builds(lambda good, bad, key: {**good, key: bad[key]}, well_formed, loose, st.sampled_from(list(GRPC_FIELDS)))
    return well_formed | one_field | one_field | loose


def shm_operations(model: str, input_shape: tuple[int, ...], objects: int) -> Any:
    st = _st()
    keys = st.integers(0, objects - 1).map(lambda k: f"@{k}") | st.sampled_from(["/nope", "../../etc/passwd", "/a/b", "", "/.", "/.."]) | st.text(max_size=12)
    size = st.integers(-4, 1 << 20) | st.sampled_from([4096, int(np.prod(input_shape)) * 4])
    register = st.fixed_dictionaries({"op": st.just("register"), "name": st.sampled_from(["r0", "r1", "r2"]) | st.text(max_size=6), "key": keys,
                                      "offset": st.integers(-2, 8192), "byte_size": size, "over": st.sampled_from(["http", "grpc"]), "raw": anything()})
    other = st.fixed_dictionaries({"op": st.sampled_from(["unregister", "status"]), "name": st.sampled_from(["r0", "r1", "r2", ""]) | st.text(max_size=6),
                                   "over": st.sampled_from(["http", "grpc"])})
    infer = st.fixed_dictionaries({"op": st.just("infer"), "region": st.sampled_from(["r0", "r1", "r2", "zz"]), "rows": st.integers(0, 3),
                                   "offset": st.integers(-4, 8192), "byte_size": size, "out_offset": st.integers(-4, 8192) | st.none(), "over": st.sampled_from(["http", "grpc"])})
    return register | other | infer


# --- senders -------------------------------------------------------------------------------------

def own_timeout(parameters: Any) -> bool:
    """Whether a request set its own positive timeout: a 504 (DEADLINE_EXCEEDED) is then
    its answer, not a server fault."""
    if not isinstance(parameters, dict):
        return False
    timeout = parameters.get("timeout")
    if isinstance(timeout, tuple):  # a gRPC parameter: (kind, value)
        timeout = timeout[1]
    return isinstance(timeout, (int, float)) and not isinstance(timeout, bool) and timeout > 0  # judged here, not by the server's parser


def send_json(target: Target, case: tuple[str, Any]) -> tuple[str, bool]:
    path, doc = case
    try:
        body = json.dumps(doc, allow_nan=True).encode()
    except (ValueError, TypeError):
        body = repr(doc).encode()
    status = target.post(path, body, {"Content-Type": "application/json"})
    if status == 504 and own_timeout(doc.get("parameters") if isinstance(doc, dict) else None):
        return "504 (its own timeout)", True
    return str(status), status < 500


def send_binary(target: Target, case: tuple[dict[str, Any], bytes, str]) -> tuple[str, bool]:
    doc, raw, length_kind = case
    spec = doc["inputs"][0]["parameters"]
    if spec["binary_data_size"] == "exact":
        spec["binary_data_size"] = len(raw)
    header = json.dumps(doc).encode()
    lengths = {"exact": str(len(header)), "short": str(max(len(header) - 3, 0)), "long": str(len(header) + len(raw) + 5), "garbage": "12abc"}
    headers = {"Content-Type": "application/octet-stream"} | ({"Inference-Header-Content-Length": lengths[length_kind]} if length_kind in lengths else {})
    status = target.post(f"/v2/models/{target.edged.model}/infer", header + raw, headers)
    return str(status), status < 500


def grpc_message(case: dict[str, Any]) -> Any:
    pb = require("tritonclient.grpc.service_pb2", "test", "fuzzing gRPC")
    message = pb.ModelInferRequest(model_name=case["model"], model_version=case["version"], id=case["id"])
    for spec in case["inputs"]:
        tensor = message.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=spec["shape"])
        tensor.contents.fp32_contents.extend(spec["fp32"])
        tensor.contents.int64_contents.extend(spec["int64"])
        _set_parameters(tensor.parameters, spec["parameters"])
    message.raw_input_contents.extend(case["raw"])
    for name, params in case["outputs"]:
        _set_parameters(message.outputs.add(name=name).parameters, params)
    _set_parameters(message.parameters, case["parameters"])
    return message


def _set_parameters(target: Any, values: dict[str, tuple[str, Any]]) -> None:
    for key, (kind, value) in values.items():
        setattr(target[key], kind, value)


def send_grpc(target: Target, case: dict[str, Any]) -> tuple[str, bool]:
    code = target.grpc_call("ModelInfer", grpc_message(case))
    if code == "DEADLINE_EXCEEDED" and own_timeout(case["parameters"]):
        return "DEADLINE_EXCEEDED (its own timeout)", True
    return code, code in GRPC_FINE


def send_shm(target: Target, case: dict[str, Any]) -> tuple[str, bool]:
    op, over = case["op"], case["over"]
    if op == "register":
        key = case["key"]
        if key.startswith("@") and key[1:].isdigit():
            key = target.shm_objects[int(key[1:])][0]
        if over == "http":
            body = {"key": key, "offset": case["offset"], "byte_size": case["byte_size"]} if case["raw"] is None else case["raw"]
            status = target.post(f"/v2/systemsharedmemory/region/{_quoted(case['name'])}/register", json.dumps(body).encode())
            return str(status), status < 500
        pb = require("tritonclient.grpc.service_pb2", "test", "fuzzing gRPC")
        message = pb.SystemSharedMemoryRegisterRequest(name=case["name"], key=key, offset=max(case["offset"], 0), byte_size=max(case["byte_size"], 0))
        code = target.grpc_call("SystemSharedMemoryRegister", message)
        return code, code in GRPC_FINE
    if op in ("unregister", "status"):
        if over == "http":
            region = f"/region/{_quoted(case['name'])}" if case["name"] else ""
            status = target.post(f"/v2/systemsharedmemory{region}/{op}", b"", method="POST" if op == "unregister" else "GET")
            return str(status), status < 500
        pb = require("tritonclient.grpc.service_pb2", "test", "fuzzing gRPC")
        kind = pb.SystemSharedMemoryUnregisterRequest if op == "unregister" else pb.SystemSharedMemoryStatusRequest
        code = target.grpc_call("SystemSharedMemoryUnregister" if op == "unregister" else "SystemSharedMemoryStatus", kind(name=case["name"]))
        return code, code in GRPC_FINE
    return _shm_infer(target, case)


def _shm_infer(target: Target, case: dict[str, Any]) -> tuple[str, bool]:
    parameters = {"shared_memory_region": case["region"], "shared_memory_byte_size": case["byte_size"], "shared_memory_offset": case["offset"]}
    shape = [case["rows"], *target.input_shape]
    out_parameters: dict[str, Any] = {"shared_memory_region": case["region"], "shared_memory_byte_size": 4096, "shared_memory_offset": case["out_offset"]}
    outputs: list[dict[str, Any]] = [{"name": "probabilities", "parameters": out_parameters}] if case["out_offset"] is not None else []
    if case["over"] == "http":
        doc = {"inputs": [{"name": "input", "shape": shape, "datatype": "FP32", "parameters": parameters}], "outputs": outputs or [{"name": "exit"}]}
        status = target.post(f"/v2/models/{target.edged.model}/infer", json.dumps(doc).encode())
        return str(status), status < 500
    message = grpc_message({"model": target.edged.model, "version": "", "id": "", "raw": [], "parameters": {},
                            "inputs": [{"name": "input", "datatype": "FP32", "shape": shape, "parameters": _as_grpc(parameters), "fp32": [], "int64": []}],
                            "outputs": [(o["name"], _as_grpc(o["parameters"])) for o in outputs]})
    code = target.grpc_call("ModelInfer", message)
    return code, code in GRPC_FINE


def _as_grpc(parameters: dict[str, Any]) -> dict[str, tuple[str, Any]]:
    """Shared-memory parameters as grpc_message takes them: (InferParameter field, value)."""
    return {k: ("int64_param", v) if isinstance(v, int) else ("string_param", v) for k, v in parameters.items()}


def _quoted(name: str) -> str:
    from urllib.parse import quote

    return quote(name, safe="") or "%20"


# --- the run -------------------------------------------------------------------------------------

def fuzz_channel(channel: str, strategy: Any, send: Callable[[Target, Any], tuple[str, bool]], target: Target, count: int, outcomes: Outcomes,
                 progress: Callable[[], None]) -> None:
    hypothesis = require("hypothesis", "test", "edge-fuzz")

    def one(case: Any) -> None:
        status, fine = send(target, case)
        outcomes.note(channel, status, fine, case)
        progress()
    settings = hypothesis.settings(max_examples=count, deadline=None, database=None, phases=[hypothesis.Phase.generate],
                                   suppress_health_check=list(hypothesis.HealthCheck))
    settings(hypothesis.given(strategy)(one))()


@dataclass(frozen=True)
class FuzzConfig:
    engines: Path
    requests: int = 100_000  # over all channels
    report: Path = Path("docs/results/fuzz.json")


def run_fuzz(config: FuzzConfig) -> dict[str, Any]:
    from tqdm import tqdm

    shm = require("tritonclient.utils.shared_memory", "test", "edge-fuzz")
    manifest = load_manifest(config.engines)
    input_shape, points = tuple(manifest.input.shape[1:]), [p.name for p in manifest.operating_points]
    objects = [(f"/edge-fuzz-{uuid.uuid4().hex[:8]}", 4096) for _ in range(SHM_OBJECTS)]
    handles = [shm.create_shared_memory_region(f"o{k}", key, size) for k, (key, size) in enumerate(objects)]
    edged = start_edged(config.engines, {"max_body_bytes": 1 << 20})
    outcomes, started = Outcomes(), time.monotonic()
    try:
        target = Target(edged, input_shape, objects)
        model = edged.model
        plans: dict[str, tuple[Any, Callable[[Target, Any], tuple[str, bool]]]] = {
            "http_json": (_st().tuples(infer_paths(model), infer_docs(input_shape, points)), send_json),
            "http_binary": (binary_cases(input_shape), send_binary),
            "grpc": (grpc_requests(model, input_shape, points), send_grpc),
            "shm": (shm_operations(model, input_shape, SHM_OBJECTS), send_shm),
        }
        per_channel = max(config.requests // len(CHANNELS), 1)
        with tqdm(total=per_channel * len(CHANNELS), desc="fuzz", unit="req") as bar:
            for channel, (strategy, send) in plans.items():
                fuzz_channel(channel, strategy, send, target, per_channel, outcomes, lambda: bar.update(1))
        alive, correct = after_checks(target, config.engines)
        target.channel.close()
        target.http.close()
    finally:
        exit_code = edged.stop()
        for handle in handles:
            shm.destroy_shared_memory_region(handle)
    sent = sum(sum(c.values()) for c in outcomes.statuses.values())
    report: dict[str, Any] = {"engines": str(config.engines), "requests": sent, "seconds": round(time.monotonic() - started, 1),
              "per_channel": {c: dict(sorted(s.items())) for c, s in outcomes.statuses.items()},
              "server_errors": len(outcomes.failures), "failure_samples": outcomes.failures[:20],
              "alive_after": alive, "correct_after": correct, "edged_exit_code": exit_code}
    report["passed"] = not outcomes.failures and alive and correct and exit_code == 0
    config.report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(config.report, report)
    print(f"fuzz: {sent} requests in {report['seconds']:.0f} s; server errors {len(outcomes.failures)}; alive after: {alive}; correct after: {correct}")
    for channel, statuses in report["per_channel"].items():
        print(f"  {channel:>12}: " + ", ".join(f"{s} x{n}" for s, n in statuses.items()))
    print(("PASSED" if report["passed"] else "FAILED") + f"; wrote {config.report}")
    return report


def after_checks(target: Target, engines: Path) -> tuple[bool, bool]:
    """The process is alive and a well-formed request over HTTP and gRPC gets the runtime's answer."""
    from edge.loadtest.clients import Client, check
    from edge.runtime import Runtime

    alive = target.edged.process.poll() is None and target.post("/v2/health/live", b"", method="GET") == 200
    if not alive:
        return False, False
    images = np.random.default_rng(5).random((3, *target.input_shape), dtype=np.float32)
    runtime = Runtime(engines)
    classes = len(runtime.manifest.classes)
    try:
        correct = True
        for protocol in ("http_binary", "grpc", "shm_http"):
            client = Client(protocol, target.edged.http, target.edged.grpc, target.edged.model, 3, target.input_shape, classes)
            try:
                answer = client.infer(images)
            finally:
                client.close()
            correct &= check(answer, np.arange(len(images)), {answer.point: runtime.infer(images, point_name=answer.point)}) is None
    finally:
        runtime.close()
    return alive, correct
