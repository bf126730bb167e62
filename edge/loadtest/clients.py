"""One inference client per protocol a board-local client may speak, all through
tritonclient as a user would: HTTP with JSON, HTTP with binary tensors, gRPC, and system
shared memory over HTTP or gRPC (inputs and the probabilities in the region; the small
outputs in the answer). Each returns the answer in one shape; `check` holds it against the
runtime's.
"""

from __future__ import annotations

import importlib
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np

PROTOCOLS = ("http_json", "http_binary", "grpc", "shm_http", "shm_grpc")
OUTPUTS = ("probabilities", "prediction", "exit")


@dataclass(frozen=True)
class Answered:
    probabilities: np.ndarray
    predictions: np.ndarray
    exits: np.ndarray
    point: str


def check(answer: Answered, rows: np.ndarray, refs: dict[str, Any], asked: str | None = None) -> str | None:
    """None if the answer is the runtime's for these images at the point it names (the
    point `asked`, where the request named one), else why not."""
    if asked is not None and answer.point != asked:
        return f"asked for point {asked!r}, answered at {answer.point!r}"
    ref = refs.get(answer.point)
    if ref is None:
        return f"answered at unknown point {answer.point!r}"
    if not np.array_equal(answer.exits, ref.exits[rows]):
        return f"exits {answer.exits.tolist()} != {ref.exits[rows].tolist()} at {answer.point}"
    if not np.array_equal(answer.predictions, ref.predictions[rows]):
        return f"predictions {answer.predictions.tolist()} != {ref.predictions[rows].tolist()} at {answer.point}"
    if not np.allclose(answer.probabilities, ref.probabilities[rows], atol=1e-4):
        return f"probabilities differ by {np.abs(answer.probabilities - ref.probabilities[rows]).max():.2e} at {answer.point}"
    return None


class Client:
    """A connection to edged in one protocol. `infer` raises tritonclient's
    InferenceServerException for an error answer."""

    def __init__(self, protocol: str, http_url: str, grpc_url: str, model: str, max_rows: int, image_shape: tuple[int, ...], classes: int) -> None:
        if protocol not in PROTOCOLS:
            raise ValueError(f"unknown protocol {protocol!r}; known: {PROTOCOLS}")
        self.protocol, self.model = protocol, model
        self.grpc = protocol in ("grpc", "shm_grpc")
        self.lib: Any = importlib.import_module("tritonclient.grpc" if self.grpc else "tritonclient.http")
        self.client = self.lib.InferenceServerClient(grpc_url if self.grpc else http_url, **({} if self.grpc else {"network_timeout": 120}))
        self.region: Any = None
        if protocol.startswith("shm"):
            self._open_region(max_rows * (int(np.prod(image_shape)) + classes) * 4)
        self.classes = classes

    def _open_region(self, size: int) -> None:
        shm = importlib.import_module("tritonclient.utils.shared_memory")
        self.region_name, key = f"lt-{uuid.uuid4().hex[:10]}", f"/edge-lt-{uuid.uuid4().hex[:10]}"
        self.region = shm.create_shared_memory_region(self.region_name, key, size)
        self.client.register_system_shared_memory(self.region_name, key, size)

    def infer(self, images: np.ndarray, parameters: dict[str, Any] | None = None) -> Answered:
        tensor = self.lib.InferInput("input", list(images.shape), "FP32")
        outputs = {name: self.lib.InferRequestedOutput(name, **({} if self.grpc else {"binary_data": self.protocol != "http_json"})) for name in OUTPUTS}
        if self.region is not None:
            shm = importlib.import_module("tritonclient.utils.shared_memory")
            shm.set_shared_memory_region(self.region, [images])
            tensor.set_shared_memory(self.region_name, images.nbytes)
            probabilities_size = len(images) * self.classes * 4
            outputs["probabilities"].set_shared_memory(self.region_name, probabilities_size, offset=images.nbytes)
        else:
            tensor.set_data_from_numpy(images, **({} if self.grpc else {"binary_data": self.protocol != "http_json"}))
        result = self.client.infer(self.model, [tensor], outputs=list(outputs.values()), parameters=parameters)
        if self.region is not None:
            probabilities = shm.get_contents_as_numpy(self.region, np.float32, [len(images), self.classes], offset=images.nbytes).copy()
        else:
            probabilities = result.as_numpy("probabilities")
        return Answered(probabilities, result.as_numpy("prediction"), result.as_numpy("exit"), self._point(result))

    def _point(self, result: Any) -> str:
        parameters = result.get_response(as_json=True)["parameters"] if self.grpc else result.get_response()["parameters"]
        point = parameters["operating_point"]
        return str(point["string_param"] if self.grpc else point)

    def close(self) -> None:
        if self.region is not None:
            shm = importlib.import_module("tritonclient.utils.shared_memory")
            try:
                self.client.unregister_system_shared_memory(self.region_name)
            finally:
                shm.destroy_shared_memory_region(self.region)
                self.region = None
        self.client.close()
