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
    with pytest.raises(ProtocolError, match=f"binary_data_size {declared} but shape \\[2, 3\\] of FP32 needs 24 bytes"):
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
        ({"operating_point": "eager", "latency_budget_ms": 3}, "not both"),
        ({"operating_point": 7}, "must be a string"),
        ({"latency_budget_ms": True}, "positive number"),
        ({"latency_budget_ms": 0}, "positive number"),
    ]:
        with pytest.raises(ProtocolError, match=message):
            parse_request(json_body(parameters), None)


def test_each_failure_answers_its_own_status() -> None:
    from http import HTTPStatus

    from edge.daemon.http import error_status
    from edge.daemon.serving import ModelUnavailable, Overloaded, RequestTimeout
    from edge.errors import InputError, ManifestError

    assert error_status(ProtocolError("big", 413))[:2] == (HTTPStatus.REQUEST_ENTITY_TOO_LARGE, "big")
    assert error_status(InputError("bad shape"))[:2] == (HTTPStatus.BAD_REQUEST, "bad shape")
    assert error_status(ManifestError("no point"))[0] == HTTPStatus.BAD_REQUEST
    assert error_status(Overloaded("full")) == (HTTPStatus.SERVICE_UNAVAILABLE, "overloaded: full", {"Retry-After": "1"})
    assert error_status(ModelUnavailable("gone"))[:2] == (HTTPStatus.SERVICE_UNAVAILABLE, "gone")
    assert error_status(RequestTimeout("late"))[:2] == (HTTPStatus.GATEWAY_TIMEOUT, "timed out: late")
    assert error_status(RuntimeError("engine"))[:2] == (HTTPStatus.INTERNAL_SERVER_ERROR, "inference failed: engine")
