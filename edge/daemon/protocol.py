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


def _positive(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0


def _point_request(parameters: dict[str, Any]) -> tuple[str | None, float | None]:
    """(operating_point, latency_budget_ms): at most one of them."""
    point, budget = parameters.get("operating_point"), parameters.get("latency_budget_ms")
    if point is not None and budget is not None:
        raise ProtocolError("ask for an operating_point or a latency_budget_ms, not both")
    if point is not None and not isinstance(point, str):
        raise ProtocolError("parameters.operating_point must be a string")
    if budget is not None and not _positive(budget):
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
    tensors, offset = {}, 0
    for spec in inputs:
        name, array, used = _input(spec, binary_part, offset)
        if name in tensors:
            raise ProtocolError(f"input {name!r} given twice")
        tensors[name], offset = array, offset + used
    if offset != len(binary_part):
        raise ProtocolError(f"binary data is {len(binary_part)} bytes but the inputs' binary_data_size add up to {offset}")
    outputs, binary = _outputs(doc.get("outputs"), bool(parameters.get("binary_data_output", False)))
    request_id = doc.get("id")
    point, budget = _point_request(parameters)
    timeout = parameters.get("timeout")  # a malformed one is ignored: the server's limit applies
    timeout_s = float(timeout) / 1e6 if _positive(timeout) else None
    return InferRequest(None if request_id is None else str(request_id), tensors, parameters, outputs, binary, point, budget, timeout_s)


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


def _input(spec: Any, binary: bytes, offset: int) -> tuple[str, np.ndarray, int]:
    spec = _object(spec, "inputs[]")
    name, shape, datatype = spec.get("name"), spec.get("shape"), spec.get("datatype")
    if not isinstance(name, str):
        raise ProtocolError("every input needs a 'name'")
    if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise ProtocolError(f"input {name!r}: 'shape' must be a list of non-negative integers")
    if datatype not in DTYPES:
        raise ProtocolError(f"input {name!r}: datatype {datatype!r} is not supported; use one of {sorted(DTYPES)}")
    dtype = np.dtype(DTYPES[datatype]).newbyteorder("<")
    count = math.prod(shape)
    if count > MAX_ELEMENTS:
        raise ProtocolError(f"input {name!r}: shape {shape} has {count} elements, more than {MAX_ELEMENTS}")
    size = _object(spec.get("parameters", {}), f"inputs[{name}].parameters").get("binary_data_size")
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
    except (TypeError, ValueError):
        raise ProtocolError(f"input {name!r}: 'data' is not a list of {datatype} numbers") from None
    if array.size != count:
        raise ProtocolError(f"input {name!r}: {array.size} values for shape {shape} ({count} needed)")
    return name, array.reshape(shape), 0


def _outputs(value: Any, all_binary: bool) -> tuple[list[str] | None, set[str]]:
    if value is None:
        return None, {"*"} if all_binary else set()
    if not isinstance(value, list):
        raise ProtocolError("'outputs' must be a list")
    names, binary = [], set()
    for spec in value:
        spec = _object(spec, "outputs[]")
        name = spec.get("name")
        if not isinstance(name, str):
            raise ProtocolError("every requested output needs a 'name'")
        names.append(name)
        parameters = _object(spec.get("parameters", {}), f"outputs[{name}].parameters")
        if parameters.get("class_count"):
            raise ProtocolError(f"output {name!r}: class_count (top-k classification) is not supported; read 'probabilities'")
        if parameters.get("binary_data", all_binary):
            binary.add(name)
    return names, binary


def encode_response(
    model: str, request_id: str | None, outputs: dict[str, np.ndarray], binary: set[str], parameters: dict[str, Any],
) -> tuple[bytes, int | None]:
    """(body, JSON header length or None when nothing is binary)."""
    tensors, chunks = [], []
    for name, array in outputs.items():
        entry: dict[str, Any] = {"name": name, "datatype": NAMES[array.dtype], "shape": list(array.shape)}
        if name in binary or "*" in binary:
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
