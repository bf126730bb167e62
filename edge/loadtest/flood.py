"""A client process that floods edged: `count` gRPC requests at once on one channel, each a
full batch. Run as its own process (`python -m edge.loadtest.flood`), it is what a
misbehaving program on the board looks like: its own connection, its own interpreter.
Prints one JSON object: how many were answered, refused, and how fast the refusals came.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from typing import Any

import numpy as np


def flood(url: str, model: str, images: np.ndarray, count: int, timeout_s: float = 120.0) -> dict[str, Any]:
    import tritonclient.grpc as triton

    client = triton.InferenceServerClient(url)
    tensor = triton.InferInput("input", list(images.shape), "FP32")
    tensor.set_data_from_numpy(images)
    outcomes: list[tuple[float, str]] = []
    finished = threading.Condition()

    def done(sent: float) -> Any:
        def callback(result: Any, error: Any) -> None:
            with finished:
                outcomes.append((time.perf_counter() - sent, "ok" if error is None else str(error.status())))
                finished.notify_all()
        return callback
    for _ in range(count):
        client.async_infer(model, [tensor], done(time.perf_counter()))
    with finished:
        finished.wait_for(lambda: len(outcomes) >= count, timeout_s)
    client.close()
    refused = sorted(t for t, status in outcomes if "UNAVAILABLE" in status)
    answered = sorted(t for t, status in outcomes if status == "ok")
    return {
        "sent": count, "answered": len(outcomes), "ok": sum(status == "ok" for _, status in outcomes), "refused": len(refused),
        "other_statuses": sorted({status for _, status in outcomes} - {"ok", "StatusCode.UNAVAILABLE"}),
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
    a = p.parse_args()
    images = np.random.default_rng(0).random(tuple(int(d) for d in a.shape.split(",")), dtype=np.float32)
    print(json.dumps(flood(a.url, a.model, images, a.count)))


if __name__ == "__main__":
    main()
