"""What a client on the same board pays per request, by protocol (`edge-bench-onboard`).

For each input size (a torchvision MobileNetV3-Small at 3x224x224 and a ResNet-20 at
1x28x28, random weights: only latency matters) edged runs in its own process, and batch-1
requests go through HTTP with JSON, HTTP with binary tensors, gRPC, and system shared
memory over HTTP and over gRPC, at concurrency 1 and 8; the same images go through
`Runtime.infer` in this process at the same concurrency. Configurations take turns in
blocks, round after round (the machine drifts). Overhead is the median request time, as
the client sees it, minus the in-process median at the same concurrency; the server's
overhead is what edged measures itself: the mean of each request's time outside the
engines (from its arrival to its answer, less its batch's runtime call: parsing, queueing,
copying, encoding), and of that the time to the request's tensors in hand (reading and
parsing the body, copying out of shared memory). gRPC messages are decoded before edged's
clock starts, so its server figures leave that out; they are read from edged's metrics
once every connection of a block has made its first (untimed) request, so they cover the
timed requests only. Writes the JSON report and a PNG.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration.bench.server import summary
from edge.atomic import write_json_atomic
from edge.deps import require
from edge.loadtest.clients import PROTOCOLS
from edge.loadtest.process import start_edged
from edge.manifest import MANIFEST_NAME
from edge.runtime import Runtime

MODELS = {  # input size -> (source, input shape)
    "3x224x224": ("torchvision:mobilenet_v3_small", (3, 224, 224)),
    "1x28x28": ("resnet20", (1, 28, 28)),
}
Call = Callable[[int], None]  # one request for image i


@dataclass(frozen=True)
class OnboardBench:
    out: Path = Path("runs/bench-onboard")  # engines are cached here
    report: Path = Path("docs/results/onboard.json")
    sizes: tuple[str, ...] = tuple(MODELS)
    concurrency: tuple[int, ...] = (1, 8)
    requests: int = 400  # per configuration and concurrency, over all rounds
    rounds: int = 8
    json_requests: int = 40  # JSON at 224x224 is 150k numbers a request: fewer of them


def random_engines(size: str, out: Path) -> Path:
    """A network with random weights and one exit, built into engines once (cached)."""
    folder = out / f"engines-{size}"
    if (folder / MANIFEST_NAME).is_file():
        return folder
    from engines.build import build_engines
    from engines.intake.sources import build_backbone
    from engines.partition import MultiExitNetwork

    source, shape = MODELS[size]
    backbone = build_backbone(source, 10, shape)
    net = MultiExitNetwork(backbone, [len(backbone.block_names) // 2])
    images = np.random.default_rng(0).random((8, *shape), dtype=np.float32)
    build_engines(net, folder, [str(c) for c in range(10)], images)
    return folder


@contextmanager
def plain_call(protocol: str, url: str, model: str, images: np.ndarray) -> Iterator[Call]:
    """HTTP with JSON or binary tensors, or gRPC: the frame travels in the request."""
    import importlib

    grpc = protocol == "grpc"
    triton = importlib.import_module("tritonclient.grpc" if grpc else "tritonclient.http")
    client = triton.InferenceServerClient(url, **({} if grpc else {"network_timeout": 120}))
    binary = {} if grpc else {"binary_data": protocol == "http_binary"}
    output = [triton.InferRequestedOutput("prediction", **binary)]

    def call(i: int) -> None:
        tensor = triton.InferInput("input", [1, *images.shape[1:]], "FP32")
        tensor.set_data_from_numpy(images[i : i + 1], **binary)
        client.infer(model, [tensor], outputs=output)
    try:
        yield call
    finally:
        client.close()


@contextmanager
def shm_call(protocol: str, url: str, model: str, images: np.ndarray) -> Iterator[Call]:
    """A region per client, registered once; each request writes its frame there and
    names it (what a camera pipeline on the board does)."""
    import importlib

    import tritonclient.utils.shared_memory as shm

    triton = importlib.import_module("tritonclient.http" if protocol == "shm_http" else "tritonclient.grpc")
    client = triton.InferenceServerClient(url)
    frame = images[:1].nbytes
    name, key = f"bench-{uuid.uuid4().hex[:8]}", f"/edge-bench-{uuid.uuid4().hex[:8]}"
    handle = shm.create_shared_memory_region(name, key, frame)
    client.register_system_shared_memory(name, key, frame)
    output = [triton.InferRequestedOutput("prediction")]

    def call(i: int) -> None:
        shm.set_shared_memory_region(handle, [images[i : i + 1]])
        tensor = triton.InferInput("input", [1, *images.shape[1:]], "FP32")
        tensor.set_shared_memory(name, frame)
        client.infer(model, [tensor], outputs=output)
    try:
        yield call
    finally:
        client.unregister_system_shared_memory(name)
        shm.destroy_shared_memory_region(handle)
        client.close()


@contextmanager
def protocol_call(protocol: str, urls: dict[str, str], model: str, images: np.ndarray) -> Iterator[Call]:
    if protocol.startswith("shm"):
        with shm_call(protocol, urls["grpc" if protocol == "shm_grpc" else "http"], model, images) as call:
            yield call
    else:
        with plain_call(protocol, urls["grpc" if protocol == "grpc" else "http"], model, images) as call:
            yield call


def timed_block(make_call: Callable[[], Any], count: int, concurrency: int, start: int, when_warm: Callable[[], None] | None = None) -> list[float]:
    """`count` requests over `concurrency` clients, each its own connection; the seconds
    each took. `when_warm` runs once every client has connected, before any is timed."""
    warm = threading.Barrier(concurrency, action=when_warm)

    def worker(k: int) -> list[float]:
        with make_call() as call:
            call(start + k)  # connect before the clock starts
            warm.wait()
            times = []
            for i in range(k, count, concurrency):
                t = time.perf_counter()
                call(start + i)
                times.append(time.perf_counter() - t)
            return times
    with ThreadPoolExecutor(concurrency) as pool:
        return [t for chunk in pool.map(worker, range(concurrency)) for t in chunk]


@contextmanager
def in_process(runtime: Runtime, images: np.ndarray) -> Iterator[Call]:
    def call(i: int) -> None:
        runtime.infer(images[i : i + 1])
    yield call


def bench_size(job: OnboardBench, size: str) -> dict[str, Any]:
    from tqdm import tqdm

    engines = random_engines(size, job.out)
    shape = MODELS[size][1]
    per_round = max(job.requests // job.rounds, *job.concurrency)
    images = np.random.default_rng(1).random((per_round + 64, *shape), dtype=np.float32)  # blocks start at 0-63
    runtime = Runtime(engines)
    edged = start_edged(engines, {"max_batch": 8, "queue_size": 256})
    http_url, model = edged.http, edged.model
    urls = {"http": http_url, "grpc": edged.grpc}
    configs = ["in_process", *PROTOCOLS]
    latencies: dict[tuple[str, int], list[float]] = {(c, n): [] for c in configs for n in job.concurrency}
    served = {key: np.zeros(3) for key in latencies}  # (seconds outside the engines, seconds to inputs, requests), as edged measured them
    try:
        steps = list(itertools.product(range(job.rounds), job.concurrency, configs))
        for _, level, config in tqdm(steps, desc=size, unit="block"):
            per_round = (job.json_requests if config == "http_json" and size == "3x224x224" else job.requests) // job.rounds
            count = max(per_round, level)
            def make(config: str = config) -> Any:
                return in_process(runtime, images) if config == "in_process" else protocol_call(config, urls, model, images)
            warm: list[np.ndarray] = []  # edged's sums once every client has connected

            def mark_warm(warm: list[np.ndarray] = warm) -> None:
                warm.append(server_seconds(http_url))
            latencies[(config, level)] += timed_block(make, count, level, len(latencies[(config, level)]) % 64, mark_warm)
            served[(config, level)] += server_seconds(http_url) - warm[0]
    finally:
        edged.stop()
        runtime.close()
    return size_report(latencies, served, job.concurrency, engines)


def server_seconds(url: str) -> np.ndarray:
    """(seconds outside the engines, seconds to inputs, requests) summed in edged's histograms, from /metrics."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(f"http://{url}/metrics", timeout=30) as response:
        text = response.read().decode()
    samples = {s.name: s.value for f in text_string_to_metric_families(text) for s in f.samples}
    names = ("edge_request_overhead_seconds_sum", "edge_request_input_seconds_sum", "edge_request_overhead_seconds_count")
    return np.array([samples.get(name, 0.0) for name in names])


def size_report(
    latencies: dict[tuple[str, int], list[float]], served: dict[tuple[str, int], np.ndarray], concurrency: tuple[int, ...], engines: Path,
) -> dict[str, Any]:
    results: dict[str, Any] = {"engines": str(engines)}
    for level in concurrency:
        base = summary(latencies[("in_process", level)], 1.0)
        row: dict[str, Any] = {"in_process_p50_ms": base["p50_ms"], "in_process_mean_ms": base["mean_ms"]}
        for protocol in PROTOCOLS:
            figures = summary(latencies[(protocol, level)], 1.0)
            outside, to_inputs, count = served[(protocol, level)]
            row[protocol] = {"requests": len(latencies[(protocol, level)]), "p50_ms": figures["p50_ms"], "p99_ms": figures["p99_ms"],
                             "overhead_ms": figures["p50_ms"] - base["p50_ms"],
                             "server_overhead_ms": 1e3 * outside / max(count, 1), "server_input_ms": 1e3 * to_inputs / max(count, 1)}
        results[f"c{level}"] = row
    return results


def bench_onboard(job: OnboardBench) -> dict[str, Any]:
    for module, extra in (("tritonclient.http", "test"), ("torchvision", "vision"), ("tqdm", "build"), ("matplotlib", "build")):
        require(module, extra, "edge-bench-onboard")  # before an engine is built or edged started
    report: dict[str, Any] = {"protocols": list(PROTOCOLS), "concurrency": list(job.concurrency), "rounds": job.rounds,
                              "overhead": "median request time minus the in-process median at the same concurrency (ms)", "sizes": {}}
    for size in job.sizes:
        report["sizes"][size] = bench_size(job, size)
    if "3x224x224" in report["sizes"] and 1 in job.concurrency:
        c1 = report["sizes"]["3x224x224"]["c1"]
        report["shm_vs_http_binary_224_c1"] = {
            "overhead_ratio": c1["shm_http"]["overhead_ms"] / c1["http_binary"]["overhead_ms"],
            "server_overhead_ratio": c1["shm_http"]["server_overhead_ms"] / c1["http_binary"]["server_overhead_ms"],
            "server_input_ratio": c1["shm_http"]["server_input_ms"] / c1["http_binary"]["server_input_ms"],
        }
    job.report.parent.mkdir(parents=True, exist_ok=True)
    write_json_atomic(job.report, report)
    plot(report, job.report.with_suffix(".png"))
    print(table(report))
    print(f"wrote {job.report} and {job.report.with_suffix('.png')}")
    return report


def table(report: dict[str, Any]) -> str:
    lines = []
    for size, results in report["sizes"].items():
        for level in report["concurrency"]:
            row = results[f"c{level}"]
            lines.append(f"\n== {size}, concurrency {level}: in-process p50 {row['in_process_p50_ms']:.3f} ms, mean {row['in_process_mean_ms']:.3f} ms")
            lines.append(f"  {'protocol':>12}  {'overhead p50':>12}  {'in edged':>9}  {'to inputs':>9}  {'p50':>8}  {'p99':>8}  n")
            lines += [f"  {p:>12}  {row[p]['overhead_ms']:9.3f} ms  {row[p]['server_overhead_ms']:6.3f} ms  {row[p]['server_input_ms']:6.3f} ms"
                      f"  {row[p]['p50_ms']:8.3f}  {row[p]['p99_ms']:8.3f}  {row[p]['requests']}" for p in PROTOCOLS]
    return "\n".join(lines)


def plot(report: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes, levels = list(report["sizes"]), report["concurrency"]
    fig, axes = plt.subplots(1, len(sizes), figsize=(6 * len(sizes), 4), squeeze=False)
    width = 0.8 / len(levels)
    for ax, size in zip(axes[0], sizes):
        for j, level in enumerate(levels):
            row = report["sizes"][size][f"c{level}"]
            ax.bar(np.arange(len(PROTOCOLS)) + j * width, [row[p]["overhead_ms"] for p in PROTOCOLS], width, label=f"concurrency {level}")
        ax.set_xticks(np.arange(len(PROTOCOLS)) + width * (len(levels) - 1) / 2, PROTOCOLS, rotation=20)
        ax.set_yscale("symlog", linthresh=1.0)
        ax.set_ylabel("overhead over in-process, p50 (ms)")
        ax.set_title(size)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
