"""Open Inference Protocol bodies parsed on their own (the HTTP layer above is tested in
test_daemon.py): binary tensor data, each input reading its own bytes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edge.daemon.protocol import ProtocolError, parse_request


def binary_body(inputs: list[tuple[str, np.ndarray, int]]) -> tuple[bytes, str]:
    """A request whose inputs carry (name, array, declared binary_data_size)."""
    header = {"inputs": [
        {"name": name, "shape": list(a.shape), "datatype": {np.float32: "FP32", np.int64: "INT64"}[a.dtype.type],
         "parameters": {"binary_data_size": size}}
        for name, a, size in inputs
    ]}
    head = json.dumps(header).encode()
    return head + b"".join(a.astype(a.dtype.newbyteorder("<")).tobytes() for _, a, _ in inputs), str(len(head))


def test_two_binary_inputs_each_read_their_own_bytes() -> None:
    images = np.arange(6, dtype=np.float32).reshape(1, 2, 3)
    ids = np.array([7, 8], dtype=np.int64)
    body, length = binary_body([("images", images, images.nbytes), ("ids", ids, ids.nbytes)])
    request = parse_request(body, length)
    assert np.array_equal(request.inputs["images"], images) and request.inputs["images"].dtype == np.float32
    assert np.array_equal(request.inputs["ids"], ids)


@pytest.mark.parametrize("declared", [23, 25, 0])
def test_a_binary_size_that_does_not_match_the_shape_is_refused(declared: int) -> None:
    images = np.zeros((2, 3), dtype=np.float32)  # 24 bytes
    body, length = binary_body([("images", images, declared)])
    with pytest.raises(ProtocolError, match=f"^input 'images': binary_data_size {declared} but shape \\[2, 3\\] of FP32 needs 24 bytes$"):
        parse_request(body, length)


def test_a_short_first_input_cannot_read_the_second_ones_bytes() -> None:
    # the first input declares 8 bytes less than its shape needs, the second 8 more: the
    # total adds up, but the first would read into the second's data
    first, second = np.ones((4,), dtype=np.float32), np.full((4,), 2.0, dtype=np.float32)
    body, length = binary_body([("a", first, 8), ("b", second, 24)])
    with pytest.raises(ProtocolError, match="input 'a': binary_data_size 8"):
        parse_request(body, length)


def test_a_binary_size_that_is_not_an_integer_is_refused() -> None:
    images = np.zeros((2,), dtype=np.float32)
    body, length = binary_body([("images", images, 8.0)])  # type: ignore[list-item]
    with pytest.raises(ProtocolError, match="binary_data_size 8.0"):
        parse_request(body, length)


def json_body(parameters: dict[str, object]) -> bytes:
    return json.dumps({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}], "parameters": parameters}).encode()


def test_a_request_asks_for_a_point_or_a_budget_and_its_timeout_is_read_in_seconds() -> None:
    request = parse_request(json_body({"operating_point": "eager", "timeout": 2_500_000}), None)
    assert (request.operating_point, request.latency_budget_ms, request.timeout_s) == ("eager", None, 2.5)
    request = parse_request(json_body({"latency_budget_ms": 3, "timeout": "soon"}), None)
    assert (request.operating_point, request.latency_budget_ms, request.timeout_s) == (None, 3.0, None)
    for parameters, message in [
        ({"operating_point": "eager", "latency_budget_ms": 3}, r"^ask for an operating_point or a latency_budget_ms, not both$"),
        ({"operating_point": 7}, r"^parameters.operating_point must be a string$"),
        ({"latency_budget_ms": True}, r"^parameters.latency_budget_ms must be a positive number$"),
        ({"latency_budget_ms": 0}, r"^parameters.latency_budget_ms must be a positive number$"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            parse_request(json_body(parameters), None)


def test_each_failure_answers_its_own_status() -> None:
    from http import HTTPStatus

    from edge.daemon.service import error_status
    from edge.daemon.serving import ModelUnavailable, Overloaded, RequestTimeout
    from edge.errors import InputError, ManifestError

    assert error_status(ProtocolError("big", 413))[:2] == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "big")
    assert error_status(InputError("bad shape"))[:2] == (HTTPStatus.BAD_REQUEST, "bad shape")
    assert error_status(ManifestError("no point"))[0] == HTTPStatus.BAD_REQUEST
    assert error_status(Overloaded("full")) == (HTTPStatus.SERVICE_UNAVAILABLE, "overloaded: full", {"Retry-After": "1"})
    assert error_status(ModelUnavailable("gone"))[:2] == (HTTPStatus.SERVICE_UNAVAILABLE, "gone")
    assert error_status(RequestTimeout("late"))[:2] == (HTTPStatus.GATEWAY_TIMEOUT, "timed out: late")
    assert error_status(RuntimeError("engine"))[:2] == (HTTPStatus.INTERNAL_SERVER_ERROR, "inference failed: engine")


def doc_body(doc: object) -> bytes:
    return json.dumps(doc).encode()


def one_input(**spec: object) -> bytes:
    return doc_body({"inputs": [{"name": "x", "shape": [2], "datatype": "FP32", "data": [0.0, 1.0]} | spec]})


@pytest.mark.parametrize(("body", "header", "message", "status"), [
    (b"{not json", None, r"^request body is not valid JSON \(", 400),
    (b"\xff\xfe", None, r"^request body is not valid JSON \(", 400),
    (b"[" * 100_000 + b"]" * 100_000, None, r"^request body nests too deeply$", 400),
    (b"[1, 2]", None, r"^request body must be a JSON object$", 400),
    (doc_body({}), None, r"^request needs 'inputs', a non-empty list$", 400),
    (doc_body({"inputs": []}), None, r"^request needs 'inputs', a non-empty list$", 400),
    (doc_body({"inputs": [1]}), None, r"^'inputs\[\]' must be a JSON object$", 400),
    (one_input(name=None), None, r"^every input needs a 'name'$", 400),
    (one_input(shape=[2, -1]), None, r"^input 'x': 'shape' must be a list of non-negative integers$", 400),
    (one_input(shape=[True]), None, r"^input 'x': 'shape' must be a list of non-negative integers$", 400),
    (one_input(shape="2"), None, r"^input 'x': 'shape' must be a list of non-negative integers$", 400),
    (one_input(datatype="STRING"), None, r"^input 'x': datatype 'STRING' is not supported; use one of \['FP16', ", 400),
    (one_input(shape=[2**31, 2**31]), None, r"^input 'x': shape \[2147483648, 2147483648\] has 4611686018427387904 elements, more than 268435456$", 400),
    (one_input(data=[1.0]), None, r"^input 'x': 1 values for shape \[2\] \(2 needed\)$", 400),
    (one_input(data=["a", "b"]), None, r"^input 'x': 'data' is not a list of FP32 numbers in range$", 400),
    (one_input(data=None), None, r"^input 'x' has neither 'data' nor parameters.binary_data_size$", 400),
    (one_input(parameters=[]), None, r"^'inputs\[x\].parameters' must be a JSON object$", 400),
    (doc_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}] * 2}), None, r"^input 'x' given twice$", 400),
    (doc_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}], "parameters": []}), None, r"^'parameters' must be a JSON object$", 400),
    (one_input(), "x", r"^Inference-Header-Content-Length must be an integer, got 'x'$", 400),
    (one_input(), "1", r"^request body is not valid JSON \(", 400),  # one byte of header: never an object
    (one_input(shape=[2**28], data=None), None, r"^input 'x' has neither 'data' nor parameters.binary_data_size$", 400),  # at the element limit
    (one_input(), "0", r"^Inference-Header-Content-Length 0 does not fit the \d+-byte body$", 400),
    (one_input(), "99999", r"^Inference-Header-Content-Length 99999 does not fit the \d+-byte body$", 400),
])
def test_each_malformed_request_is_refused_with_its_own_message(body: bytes, header: str | None, message: str, status: int) -> None:
    with pytest.raises(ProtocolError, match=message) as error:
        parse_request(body, header)
    assert error.value.status == status


def outputs_body(outputs: object, **parameters: object) -> bytes:
    return doc_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}], "outputs": outputs, "parameters": parameters})


def test_requested_outputs_and_which_come_back_binary() -> None:
    request = parse_request(outputs_body([{"name": "prediction"}, {"name": "probabilities", "parameters": {"binary_data": True}}]), None)
    assert (request.outputs, request.binary) == (["prediction", "probabilities"], {"probabilities"})
    request = parse_request(outputs_body([{"name": "exit", "parameters": {"binary_data": False}}, {"name": "prediction"}], binary_data_output=True), None)
    assert (request.outputs, request.binary) == (["exit", "prediction"], {"prediction"})
    unnamed = parse_request(doc_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}], "parameters": {"binary_data_output": True}}), None)
    assert (unnamed.outputs, unnamed.binary) == (None, {"*"})
    plain = parse_request(doc_body({"inputs": [{"name": "x", "shape": [1], "datatype": "FP32", "data": [0.0]}], "id": 7}), None)
    assert (plain.outputs, plain.binary, plain.id, plain.parameters) == (None, set(), "7", {})
    for outputs, message in [
        ({"name": "exit"}, r"^'outputs' must be a list$"),
        ([3], r"^'outputs\[\]' must be a JSON object$"),
        ([{"parameters": {}}], r"^every requested output needs a 'name'$"),
        ([{"name": "exit", "parameters": 1}], r"^'outputs\[exit\].parameters' must be a JSON object$"),
        ([{"name": "probabilities", "parameters": {"class_count": 3}}], r"^output 'probabilities': class_count \(top-k classification\) is not supported; read 'probabilities'$"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            parse_request(outputs_body(outputs), None)


def test_a_response_carries_json_and_binary_outputs_as_asked() -> None:
    from edge.daemon.protocol import encode_response, error_body

    outputs = {"probabilities": np.array([[0.25, 0.75]], dtype=np.float32), "prediction": np.array([1], dtype=np.int64)}
    body, length = encode_response("m", "r1", outputs, {"probabilities"}, {"operating_point": "full"})
    assert length is not None
    head = json.loads(body[:length])
    assert head["model_name"] == "m" and head["model_version"] == "1" and head["id"] == "r1" and head["parameters"] == {"operating_point": "full"}
    probabilities, prediction = head["outputs"]
    assert probabilities == {"name": "probabilities", "datatype": "FP32", "shape": [1, 2], "parameters": {"binary_data_size": 8}}
    assert prediction == {"name": "prediction", "datatype": "INT64", "shape": [1], "data": [1]}
    assert np.array_equal(np.frombuffer(body[length:], dtype="<f4"), [0.25, 0.75])
    body, length = encode_response("m", None, outputs, set(), {})
    assert length is None and "id" not in json.loads(body)
    everything, length = encode_response("m", None, outputs, {"*"}, {})
    assert length is not None and len(everything) - length == 8 + 8
    assert json.loads(error_body("bad")) == {"error": "bad"}


def test_edges_of_a_well_formed_request() -> None:
    body = json_body({"latency_budget_ms": 0.5, "timeout": 0.5})
    request = parse_request(body, str(len(body)))  # a header length of the whole body: all JSON, no binary part
    assert (request.latency_budget_ms, request.timeout_s, request.id) == (0.5, 0.5e-6, None)
    empty = parse_request(doc_body({"inputs": [{"name": "x", "shape": [0, 3], "datatype": "FP32", "data": []}]}), None)
    assert empty.inputs["x"].shape == (0, 3)
    column = parse_request(doc_body({"inputs": [{"name": "x", "shape": [2, 1], "datatype": "INT64", "data": [4, 5]}]}), None)
    assert column.inputs["x"].shape == (2, 1) and column.inputs["x"].dtype == np.int64
    images = np.arange(4, dtype=np.float32)
    binary, length = binary_body([("x", images, 16)])
    parsed = parse_request(binary, length).inputs["x"]
    parsed[0] = 7.0  # the request's own copy, writable, not a view of the body
    assert parsed.flags.writeable and parsed[0] == 7.0


def test_binary_data_that_is_short_or_left_over_is_refused_with_the_counts() -> None:
    images = np.zeros((4,), dtype=np.float32)
    body, length = binary_body([("x", images, 16)])
    with pytest.raises(ProtocolError, match=r"^input 'x': binary data ends after 12 of its 16 bytes$"):
        parse_request(body[:-4], length)
    two, length2 = binary_body([("x", images, 16), ("y", images, 16)])
    with pytest.raises(ProtocolError, match=r"^input 'y': binary data ends after 4 of its 16 bytes$"):
        parse_request(two[:-12], length2)
    with pytest.raises(ProtocolError, match=r"^binary data is 20 bytes but the inputs' binary_data_size add up to 16$"):
        parse_request(body + b"xxxx", length)
