"""edged against the same runtime called in-process (`edge-bench-server`).

Starts edged as its own process (so client and server do not share one interpreter),
then at concurrency 1, 8 and 32 sends batch-1 requests with tritonclient (binary
tensors) and records each request's wall time; the same images go through
`Runtime.infer` in this process at concurrency 1. Reports throughput and p50/p99, and
the server's overhead per request at concurrency 1 (median server time minus median
in-process time). Writes bench_server.json and prints the table.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.data import load_dataset
from edge.atomic import write_json_atomic
from edge.errors import UserError
from edge.loadtest.process import start_edged
from edge.runtime import Runtime


@dataclass(frozen=True)
class ServerBench:
    engines: Path
    out: Path = Path("runs/bench-server")
    data: str = "fashion-mnist"
    requests: int = 2000  # per concurrency level
    concurrency: tuple[int, ...] = (1, 8, 32)
    max_batch: int = 16


def bench_server(job: ServerBench) -> dict[str, Any]:
    """edged in its own process against the runtime in this one; writes bench_server.json
    under `job.out` and returns the report."""
    import tritonclient.http as triton

    runtime = Runtime(job.engines)
    data = load_dataset(job.data, "test")
    if tuple(data.input_shape) != tuple(runtime.manifest.input.shape[1:]):
        raise UserError(f"{job.data} images are {data.input_shape}, the engines take {tuple(runtime.manifest.input.shape[1:])}")
    images = np.ascontiguousarray(data.images[: job.requests], dtype=np.float32)
    in_process = time_in_process(runtime, images)
    input_name = runtime.manifest.input.name
    runtime.close()
    edged = start_edged(job.engines, {"max_batch": job.max_batch, "queue_size": 1024, "grpc_port": -1})  # HTTP only, as measured
    url, model = edged.http, edged.model
    try:
        results: dict[str, dict[str, float]] = {"in_process": in_process}
        for level in job.concurrency:
            results[f"server_c{level}"] = time_server(triton, url, model, input_name, images, level)
    finally:
        edged.stop()
    report = {
        "engines": str(job.engines), "requests": len(images), "batch": 1, "max_batch": job.max_batch,
        "results": results,
        "overhead_ms_c1": results["server_c1"]["p50_ms"] - in_process["p50_ms"] if "server_c1" in results else None,
    }
    job.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.out / "bench_server.json", report)
    print(f"\n== edged vs in-process ({len(images)} batch-1 requests each)")
    for name, r in results.items():
        print(f"  {name:>12}  {r['throughput']:8.0f} req/s  p50 {r['p50_ms']:.3f} ms  p99 {r['p99_ms']:.3f} ms")
    if report["overhead_ms_c1"] is not None:
        print(f"server overhead per request at concurrency 1 (p50): {report['overhead_ms_c1']:.3f} ms")
    print(f"wrote {job.out / 'bench_server.json'}")
    return report


def summary(latencies_s: list[float], wall_s: float) -> dict[str, float]:
    ms = np.asarray(latencies_s) * 1e3
    return {"throughput": len(ms) / wall_s, "mean_ms": float(ms.mean()), "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def time_in_process(runtime: Runtime, images: np.ndarray) -> dict[str, float]:
    for i in range(min(50, len(images))):  # warm-up
        runtime.infer(images[i : i + 1])
    latencies = []
    start = time.perf_counter()
    for i in range(len(images)):
        t = time.perf_counter()
        runtime.infer(images[i : i + 1])
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start)


def time_server(triton: Any, url: str, model: str, input_name: str, images: np.ndarray, concurrency: int) -> dict[str, float]:
    """Each worker thread makes its own client (tritonclient's gevent connections are per thread)."""
    shape = [1, *images.shape[1:]]

    def one(client: Any, i: int) -> float:
        tensor = triton.InferInput(input_name, shape, "FP32")
        tensor.set_data_from_numpy(images[i : i + 1])
        t = time.perf_counter()
        client.infer(model, [tensor], outputs=[triton.InferRequestedOutput("prediction")])
        return time.perf_counter() - t

    def worker(k: int) -> list[float]:
        client = triton.InferenceServerClient(url, network_timeout=60)
        one(client, k)  # connect before the clock starts
        return [one(client, i) for i in range(k, len(images), concurrency)]

    def warm() -> None:
        client = triton.InferenceServerClient(url, network_timeout=60)
        for i in range(min(50, len(images))):
            one(client, i)

    with ThreadPoolExecutor(1) as pool:
        pool.submit(warm).result()
    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        latencies = [t for chunk in pool.map(worker, range(concurrency)) for t in chunk]
    return summary(latencies, time.perf_counter() - start)
