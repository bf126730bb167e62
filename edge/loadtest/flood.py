"""A client process that floods edged: `count` gRPC requests at once on one channel, each a
full batch. Run as its own process (`python -m edge.loadtest.flood`), it is what a
misbehaving program on the board looks like: its own connection, its own interpreter.
Its requests name the costliest operating point, so each keeps the engines busy longer
than edged takes to take in the next. Prints one JSON object: how many were answered,
refused, and how fast the refusals came.

The burst must outrun edged on any machine, however small the model: the message is built
once and the calls go out back to back on a channel already connected (building each call
with tritonclient took about as long as edged took to answer it, and a fast machine then
never saw its queue fill).
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np

# The transport's own refusal beyond its calls in flight (edged's `max_rpcs`) is fast too.
REFUSALS = ("StatusCode.UNAVAILABLE", "StatusCode.RESOURCE_EXHAUSTED")


def infer_message(model: str, images: np.ndarray, point: str | None) -> Any:
    from tritonclient.grpc import service_pb2

    request = service_pb2.ModelInferRequest(model_name=model)
    if point is not None:
        request.parameters["operating_point"].string_param = point
    request.inputs.add(name="input", datatype="FP32", shape=list(images.shape))  # its bytes travel in raw_input_contents
    request.raw_input_contents.append(np.ascontiguousarray(images, dtype=np.float32).tobytes())
    return request


def flood(url: str, model: str, images: np.ndarray, count: int, point: str | None = None, timeout_s: float = 120.0) -> dict[str, Any]:
    import grpc
    from tritonclient.grpc import service_pb2_grpc

    channel = grpc.insecure_channel(url)
    grpc.channel_ready_future(channel).result(timeout=30)
    stub = service_pb2_grpc.GRPCInferenceServiceStub(channel)
    request = infer_message(model, images, point)
    outcomes: list[tuple[float, str]] = []
    finished = threading.Condition()

    def done(sent: float) -> Any:
        def callback(future: Any) -> None:
            with finished:
                outcomes.append((time.perf_counter() - sent, str(future.code())))
                finished.notify_all()
        return callback
    for _ in range(count):
        stub.ModelInfer.future(request, timeout=timeout_s).add_done_callback(done(time.perf_counter()))
    with finished:
        finished.wait_for(lambda: len(outcomes) >= count, timeout_s)
    channel.close()
    refused = sorted(t for t, status in outcomes if status in REFUSALS)
    answered = sorted(t for t, status in outcomes if status == "StatusCode.OK")
    return {
        "sent": count, "answered": len(outcomes), "ok": len(answered), "refused": len(refused),
        "refused_by_transport": sum(status == "StatusCode.RESOURCE_EXHAUSTED" for _, status in outcomes),
        "other_statuses": sorted({status for _, status in outcomes} - {"StatusCode.OK", *REFUSALS}),
        "refusal_p50_ms": 1e3 * float(np.median(refused)) if refused else None,
        "refusal_p99_ms": 1e3 * float(np.percentile(refused, 99)) if refused else None,
        "answer_p50_ms": 1e3 * float(np.median(answered)) if answered else None,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", required=True)
    p.add_argument("--model", required=True)
    p.add_argument("--shape", required=True, help="the batch's shape, e.g. 64,1,8,8")
    p.add_argument("--count", type=int, default=400)
    p.add_argument("--point", help="the operating point every request asks for (default: the governor's)")
    a = p.parse_args()
    images = np.random.default_rng(0).random(tuple(int(d) for d in a.shape.split(",")), dtype=np.float32)
    print(json.dumps(flood(a.url, a.model, images, a.count, a.point)))


if __name__ == "__main__":
    main()
