"""Every depth configuration of an adaptive-depth network measured, and the Pareto frontier
of depth configuration x exit thresholds (`edge-adaptive-report`).

Builds the engines (both variants of every stage) into OUT/engines, then at batch 1 on
the test split, block-interleaved: the static model and every depth configuration with
exits off (the table and bar chart), then every depth configuration at each entropy
threshold (the frontier). The frontier's points become the manifest's operating points,
with the depth configuration they run at. Writes adaptive.json, depths.png, pareto.png.
"""

from __future__ import annotations

from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Config, Measurement, StaticModel, measure_interleaved, runtime_config
from calibration.plots.adaptive import plot_depths, plot_pareto
from calibration.points import check_data
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError
from edge.frontier import pareto_front
from edge.manifest import Manifest, OperatingPoint
from edge.runtime import Runtime
from engines.adaptive import AdaptiveBackbone
from engines.backbone import BlockBackbone
from engines.checkpoint import load_checkpoint
from engines.partition import MultiExitNetwork

THRESHOLDS = (0.05, 0.1, 0.2, 0.35, 0.5, 0.8)


@dataclass(frozen=True)
class AdaptiveReportJob:
    checkpoint: Path  # adaptive-exits.pt from edge-train-adaptive
    out: Path
    static: Path | None = None  # the same network trained the normal way, to compare with
    data: str = "fashion-mnist"
    test_samples: int = 0  # for the depth table; 0: the whole test split
    sweep_samples: int = 3000  # for the depth x threshold sweep
    thresholds: tuple[float, ...] = THRESHOLDS  # entropy thresholds (nats)


def adaptive_report(job: AdaptiveReportJob) -> dict[str, Any]:
    """Build, measure, write adaptive.json, depths.png and pareto.png under `job.out` and the
    frontier's operating points into the manifest; returns the report."""
    set_threads()
    test = load_dataset(job.data, "test")
    net, static = load_networks(job.checkpoint, job.static, test)
    check_data(net, test, job.data)
    thresholds = list(job.thresholds)
    manifest = pipeline.build(net, test, job.out / "engines", job.checkpoint.stem, static)
    runtime = Runtime(manifest)
    try:
        report = measure(job, net, runtime, manifest, static is not None, test, thresholds)
    finally:
        runtime.close()
    pipeline.with_points(manifest, operating_points(report, runtime.num_exits))
    write_json_atomic(job.out / "adaptive.json", report)
    plot_depths(report, job.out / "depths.png")
    plot_pareto(report, job.out / "pareto.png")
    return report


def measure(
    job: AdaptiveReportJob, net: MultiExitNetwork, runtime: Runtime, manifest: Manifest, with_static: bool,
    test: Dataset, thresholds: list[float],
) -> dict[str, Any]:
    """The depth table and the depth x threshold sweep, as the report."""
    static_model = StaticModel(manifest.path_of(manifest.static_model["file"])) if with_static else None  # type: ignore[index]
    depths = net.backbone.depth_configs()  # type: ignore[operator]
    table_data = test.subset(slice(0, job.test_samples)) if job.test_samples else test
    table = measure_depths(runtime, static_model, depths, table_data)
    sweep_data = test.subset(slice(0, job.sweep_samples))
    sweep = measure_sweep(runtime, static_model, depths, thresholds, sweep_data)
    return make_report(job, table, sweep, depths, (len(table_data), len(sweep_data)), thresholds)


def load_networks(checkpoint: Path, static_path: Path | None, data: Dataset) -> tuple[MultiExitNetwork, BlockBackbone | None]:
    _, net, _ = load_checkpoint(checkpoint)
    if not isinstance(net, MultiExitNetwork) or not isinstance(net.backbone, AdaptiveBackbone):
        raise UserError(f"{checkpoint}: not an adaptive-depth network with exits (edge-train-adaptive writes adaptive-exits.pt)")
    static = pipeline.plain_checkpoint(static_path, data)[1] if static_path is not None else None
    return net, static


def measure_depths(runtime: Runtime, static: StaticModel | None, depths: list[str], data: Dataset) -> dict[str, Measurement]:
    """Every depth configuration with its exits off, and the static model, interleaved."""
    off = [None] * (runtime.num_exits - 1)
    configs: dict[str, Config] = {"static": static.config()} if static is not None else {}
    # the segments at every depth, full depth too (not its whole engine): depths compared alike
    configs |= {depth: runtime_config(runtime, off, depth=depth, whole=False) for depth in depths}
    return measure_interleaved(configs, data)


def measure_sweep(
    runtime: Runtime, static: StaticModel | None, depths: list[str], thresholds: list[float], data: Dataset,
) -> dict[str, Measurement]:
    """Every depth at every threshold (and exits off), with the static model alongside
    so that the frontier's latencies compare with it under the same conditions."""
    configs: dict[str, Config] = {"static": static.config()} if static is not None else {}
    for depth in depths:
        for threshold in [None, *thresholds]:
            limits = [threshold] * (runtime.num_exits - 1)
            configs[sweep_name(depth, threshold)] = runtime_config(runtime, limits, depth=depth)
    return measure_interleaved(configs, data)


def sweep_name(depth: str, threshold: float | None) -> str:
    return f"{depth}-off" if threshold is None else f"{depth}-t{threshold:g}"


def make_report(
    job: AdaptiveReportJob, table: dict[str, Measurement], sweep: dict[str, Measurement],
    depths: list[str], samples: tuple[int, int], thresholds: list[float],
) -> dict[str, Any]:
    super_depth, base_depth = depths[0], depths[-1]
    rows = {name: m.to_dict() for name, m in table.items()}
    points = []
    for depth in depths:
        for threshold in [None, *thresholds]:
            m = sweep[sweep_name(depth, threshold)]
            points.append({"depth": depth, "threshold": threshold, **m.to_dict()})
    full, base = rows[super_depth], rows[base_depth]
    summary = {
        "super_accuracy": full["accuracy"], "base_accuracy": base["accuracy"],
        "base_accuracy_drop_points": 100 * (full["accuracy"] - base["accuracy"]),
        "base_latency_vs_super": base["mean_ms"] / full["mean_ms"],
    }
    if "static" in rows:
        summary["static_accuracy"] = rows["static"]["accuracy"]
        summary["super_vs_static_points"] = 100 * (full["accuracy"] - rows["static"]["accuracy"])
        summary["super_latency_vs_static"] = full["mean_ms"] / rows["static"]["mean_ms"]
    return {
        "dataset": job.data, "checkpoint": str(job.checkpoint), "backend": "onnxruntime CPU", "threads": online_cores(),
        "super_depth": super_depth, "base_depth": base_depth,
        "table_samples": samples[0], "depths": rows, "sweep_samples": samples[1],
        "thresholds": thresholds, "sweep": points, "pareto": pareto_front(points, itemgetter("mean_ms"), itemgetter("accuracy")),
        "sweep_static": sweep["static"].to_dict() if "static" in sweep else None, "summary": summary,
    }


def operating_points(report: dict[str, Any], num_exits: int) -> list[OperatingPoint]:
    """Full depth, base depth and every other depth with exits off (the governor's depth
    switch), then the frontier's points with exits on."""
    rows = report["depths"]
    off: list[float | None] = [None] * (num_exits - 1)
    points = [OperatingPoint("full", off, measured=_measured(rows[report["super_depth"]]))]
    points.append(OperatingPoint("base", off, depth=report["base_depth"], measured=_measured(rows[report["base_depth"]])))
    for depth, row in rows.items():
        if depth not in ("static", report["super_depth"], report["base_depth"]):
            points.append(OperatingPoint(f"depth-{depth}", off, depth=depth, measured=_measured(row)))
    for p in sorted(report["pareto"], key=lambda p: -p["accuracy"]):
        if p["threshold"] is not None:
            name = sweep_name(p["depth"], p["threshold"])
            points.append(OperatingPoint(name, [p["threshold"]] * (num_exits - 1), depth=p["depth"], measured=_measured(p)))
    return points


def _measured(m: dict[str, Any]) -> dict[str, Any]:
    return {k: m[k] for k in ("accuracy", "mean_ms", "p50_ms", "p99_ms", "exit_fractions", "samples")}


def print_summary(report: dict[str, Any]) -> None:
    rows = report["depths"]
    reference = rows[report["super_depth"]]["mean_ms"]
    print(f"\n== depth configurations ({report['table_samples']} test images, batch 1, exits off; T = stage skipped)")
    for name, m in rows.items():
        print(f"  {name:>8}  acc {m['accuracy']:.2%}  mean {m['mean_ms']:.3f} ms ({m['mean_ms'] / reference:.2f}x super)  p99 {m['p99_ms']:.3f} ms")
    print(f"\n== Pareto frontier, depth x entropy threshold ({report['sweep_samples']} test images)")
    for p in report["pareto"]:
        reach = ", ".join(f"{f:.2f}" for f in p["exit_fractions"])
        print(f"  {sweep_name(p['depth'], p['threshold']):>12}  acc {p['accuracy']:.2%}  mean {p['mean_ms']:.3f} ms  exits [{reach}]")
    s = report["summary"]
    print(f"\nbase-net: {s['base_accuracy_drop_points']:.2f} points below the super-net at {s['base_latency_vs_super']:.2f}x its latency")
    if "super_vs_static_points" in s:
        print(f"super-net vs the network trained normally: {s['super_vs_static_points']:+.2f} points, {s['super_latency_vs_static']:.2f}x latency")
