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
