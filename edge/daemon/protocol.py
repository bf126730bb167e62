"""Open Inference Protocol v2 bodies: requests in, responses out, JSON and the binary
tensor extension (docs/daemon.md, References).

A request body is JSON, or JSON followed by raw little-endian tensor bytes when the
`Inference-Header-Content-Length` header gives the JSON part's length; an input then
carries `parameters.binary_data_size` instead of `data`. Outputs go back as binary when
the request asks (`outputs[].parameters.binary_data`, or `parameters.binary_data_output`
for all of them, which is what tritonclient sends when it names no outputs).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any, TypeGuard

import numpy as np

from edge.daemon.shm import RegionRef, non_negative
from edge.errors import UserError

DTYPES = {"FP32": np.float32, "FP64": np.float64, "FP16": np.float16, "INT64": np.int64, "INT32": np.int32, "INT8": np.int8, "UINT8": np.uint8}
NAMES = {np.dtype(v): k for k, v in DTYPES.items()}
MAX_ELEMENTS = 1 << 28  # far beyond any body the size limit lets through


class ProtocolError(UserError):
    """A request the protocol cannot accept: HTTP 400 (or the status given)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass
class InferRequest:
    id: str | None
    inputs: dict[str, np.ndarray]
    parameters: dict[str, Any]
    outputs: list[str] | None  # None: every output
    binary: set[str] = field(default_factory=set)  # outputs to send as raw bytes
    operating_point: str | None = None  # parameters.operating_point
    latency_budget_ms: float | None = None  # parameters.latency_budget_ms
    timeout_s: float | None = None  # parameters.timeout: tritonclient's, in microseconds
    shm_inputs: dict[str, ShmInput] = field(default_factory=dict)  # inputs to read from registered regions
    shm_outputs: dict[str, RegionRef] = field(default_factory=dict)  # outputs to write into them


@dataclass(frozen=True)
class ShmInput:
    ref: RegionRef
    dtype: np.dtype[Any]
    shape: list[int]


def region_ref(parameters: dict[str, Any], what: str) -> RegionRef | None:
    """The shared-memory parameters of an input or output, if it names a region."""
    region = parameters.get("shared_memory_region")
    if region is None:
        return None
    if not isinstance(region, str) or not region:
        raise ProtocolError(f"{what}: shared_memory_region must be a region's name")
    size, offset = parameters.get("shared_memory_byte_size"), parameters.get("shared_memory_offset", 0)
    return RegionRef(region, non_negative(size, f"{what}: shared_memory_byte_size"), non_negative(offset, f"{what}: shared_memory_offset"))


def output_region(name: str, parameters: dict[str, Any]) -> RegionRef | None:
    """The region a requested output is to be written to, if any (HTTP and gRPC alike)."""
    if parameters.get("class_count"):
        raise ProtocolError(f"output {name!r}: class_count (top-k classification) is not supported; read 'probabilities'")
    return region_ref(parameters, f"output {name!r}")


def positive(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def point_request(parameters: dict[str, Any]) -> tuple[str | None, float | None]:
    """(operating_point, latency_budget_ms): at most one of them."""
    point, budget = parameters.get("operating_point"), parameters.get("latency_budget_ms")
    if point is not None and budget is not None:
        raise ProtocolError("ask for an operating_point or a latency_budget_ms, not both")
    if point is not None and not isinstance(point, str):
        raise ProtocolError("parameters.operating_point must be a string")
    if budget is not None and not positive(budget):
        raise ProtocolError("parameters.latency_budget_ms must be a positive number")
    return point, None if budget is None else float(budget)


def parse_request(body: bytes, header_length: str | None) -> InferRequest:
    json_part, binary_part = _split(body, header_length)
    try:
        doc = json.loads(json_part)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ProtocolError(f"request body is not valid JSON ({exc})") from None
    except RecursionError:
        raise ProtocolError("request body nests too deeply") from None
    if not isinstance(doc, dict):
        raise ProtocolError("request body must be a JSON object")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise ProtocolError("request needs 'inputs', a non-empty list")
    parameters = _object(doc.get("parameters", {}), "parameters")
    tensors: dict[str, np.ndarray] = {}
    shared: dict[str, ShmInput] = {}
    offset = 0
    for spec in inputs:
        name, array, used = _input(spec, binary_part, offset)
        if name in tensors or name in shared:
            raise ProtocolError(f"input {name!r} given twice")
        if isinstance(array, ShmInput):
            shared[name] = array
        else:
            tensors[name] = array
        offset += used
    if offset != len(binary_part):
        raise ProtocolError(f"binary data is {len(binary_part)} bytes but the inputs' binary_data_size add up to {offset}")
    outputs, binary, shm_outputs = _outputs(doc.get("outputs"), bool(parameters.get("binary_data_output", False)))
    request_id = doc.get("id")
    point, budget = point_request(parameters)
    timeout = parameters.get("timeout")  # a malformed one is ignored: the server's limit applies
    timeout_s = float(timeout) / 1e6 if positive(timeout) else None
    return InferRequest(None if request_id is None else str(request_id), tensors, parameters, outputs, binary, point, budget, timeout_s, shared, shm_outputs)


def _split(body: bytes, header_length: str | None) -> tuple[bytes, bytes]:
    if header_length is None:
        return body, b""
    try:
        n = int(header_length)
    except ValueError:
        raise ProtocolError(f"Inference-Header-Content-Length must be an integer, got {header_length!r}") from None
    if not 0 < n <= len(body):
        raise ProtocolError(f"Inference-Header-Content-Length {n} does not fit the {len(body)}-byte body")
    return body[:n], body[n:]


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ProtocolError(f"'{what}' must be a JSON object")
    return value


def input_header(name: Any, shape: Any, datatype: Any) -> tuple[str, list[int], np.dtype[Any], int]:
    """(name, shape, little-endian dtype, element count) of an input, checked."""
    if not isinstance(name, str):
        raise ProtocolError("every input needs a 'name'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not supported; use one of {sorted(DTYPES)}")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {shape} has {count} elements, more than {MAX_ELEMENTS}")
    return name, shape, np.dtype(DTYPES[datatype]).newbyteorder("<"), count


def _input(spec: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray | ShmInput, int]:
    spec = _object(spec, "inputs[]")
    name, shape, dtype, count = input_header(spec.get("name"), spec.get("shape"), spec.get("datatype"))
    datatype = spec["datatype"]
    parameters = _object(spec.get("parameters", {}), f"inputs[{name}].parameters")
    ref = region_ref(parameters, f"input {name!r}")
    if ref is not None:
        return name, ShmInput(ref, dtype.newbyteorder("="), shape), 0
    size = parameters.get("binary_data_size")
    if size is not None:
        if not isinstance(size, int) or size != count * dtype.itemsize:
            raise ProtocolError(f"input {name!r}: binary_data_size {size} but shape {shape} of {datatype} needs {count * dtype.itemsize} bytes")
        if offset + size > len(binary):
            raise ProtocolError(f"input {name!r}: binary data ends after {len(binary) - offset} of its {size} bytes")
        array = np.frombuffer(binary, dtype=dtype, count=count, offset=offset).reshape(shape)
        return name, array.astype(dtype.newbyteorder("="), copy=True), size
    data = spec.get("data")
    if data is None:
        raise ProtocolError(f"input {name!r} has neither 'data' nor parameters.binary_data_size")
    try:
        array = np.asarray(data, dtype=DTYPES[datatype])
    except (TypeError, ValueError, OverflowError):  # OverflowError: a value out of the datatype's range
        raise ProtocolError(f"input {name!r}: 'data' is not a list of {datatype} numbers in range") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {shape} ({count} needed)")
    return name, array.reshape(shape), 0


def _outputs(value: Any, all_binary: bool) -> tuple[list[str] | None, set[str], dict[str, RegionRef]]:
    if value is None:
        return None, {"*"} if all_binary else set(), {}
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list")
    names, binary, shared = [], set(), {}
    for spec in value:
        spec = _object(spec, "outputs[]")
        name = spec.get("name")
        if not isinstance(name, str):
            raise ProtocolError("every requested output needs a 'name'")
        names.append(name)
        parameters = _object(spec.get("parameters", {}), f"outputs[{name}].parameters")
        ref = output_region(name, parameters)
        if ref is not None:
            shared[name] = ref
        elif parameters.get("binary_data", all_binary):
            binary.add(name)
    return names, binary, shared


def encode_response(
    model: str, request_id: str | None, outputs: dict[str, np.ndarray], binary: set[str], parameters: dict[str, Any],
    shared: dict[str, RegionRef] | None = None,
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when nothing is binary); outputs written to
    shared memory are described, not sent."""
    tensors, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[array.dtype], "shape": list(array.shape)}
        ref = (shared or {}).get(name)
        if ref is not None:
            entry["parameters"] = {"shared_memory_region": ref.region, "shared_memory_byte_size": array.nbytes, "shared_memory_offset": ref.offset}
        elif name in binary or "*" in binary:
            raw = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.ravel().tolist()
        tensors.append(entry)
    doc: dict[str, Any] = {"model_name": model, "model_version": "1", "outputs": tensors, "parameters": parameters}
    if request_id is not None:
        doc["id"] = request_id
    header = json.dumps(doc, separators=(",", ":")).encode()
    if not chunks:
        return header, None
    return header + b"".join(chunks), len(header)


def error_body(message: str) -> bytes:
    return json.dumps({"error": message}).encode()
