"""Per-input depth (or width) against every fixed configuration, measured through the
runtime (docs/dynamic.md). A network of narrow and wide stages (engines.slimmable) runs
the same steps: its base variants are narrow instead of shallow.

1. Build the adaptive network's engines and time every fixed depth configuration on
   training images the network did not see (batch 1, interleaved, exits off).
2. Train the depth gates over the depth tree of those images with those measured costs,
   alpha found by bisection for a latency budget (calibration.depth_gates).
3. Build again with the gates in both variants of each segment; operating points: every
   fixed depth, and per-input depth (G letters) from stage 0 full or skipped at several
   routing thresholds.
4. Measure them all on the test split, batch 1, interleaved; compare each per-input point
   with the fastest fixed depth at least as accurate.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from calibration import depth_gates as dg
from calibration.adaptive_report import load_networks
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Measurement, measure_interleaved, runtime_config
from calibration.plots.dynamic import plot_frontiers
from calibration.points import check_data
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.errors import UserError
from edge.frontier import pareto_front
from edge.manifest import FULL, ROUTED, SKIP, STAGE_VARIANTS, OperatingPoint
from edge.runtime import Runtime
from engines.adaptive import AdaptiveBackbone
from engines.build import BuildOptions, build_engines


@dataclass(frozen=True)
class DynamicDepthJob:
    checkpoint: Path  # adaptive-exits.pt from edge-train-adaptive
    out: Path
    data: str = "fashion-mnist"
    calibration: tuple[int, int] = (30000, 40000)  # training images the network did not see (edge-train-adaptive --train-samples 30000)
    cost_samples: int = 2000  # of those, timed per fixed depth for the gates' costs
    test_samples: int = 0  # 0: the whole test split
    budget: float = 0.8  # routed mean latency over the full depth's, on calibration, from stage 0 full
    route_thresholds: tuple[float, ...] = (0.2, 0.35, 0.5, 0.65, 0.8)
    same_accuracy: float = 0.001  # fixed depths within this much (0.1 pt: ten of 10k images) count as equally accurate
    results: Path | None = None  # also write {"depth" or "width": report} here (other keys kept) and the frontier PNG beside it (docs/results/dynamic.json)


def dynamic_depth(job: DynamicDepthJob) -> dict[str, Any]:
    """Build, train, measure; writes dynamic-depth.json (dynamic-width.json) and its
    frontier PNG under `job.out`."""
    set_threads()
    test = load_dataset(job.data, "test")
    calibration = load_dataset(job.data, "train").subset(slice(*job.calibration))
    if len(calibration) < 100:
        raise UserError(f"calibration images {job.calibration[0]}:{job.calibration[1]} of {job.data}'s training split: "
                        f"{len(calibration)} there, the gates need at least 100")
    net, _ = load_networks(job.checkpoint, None, test)
    check_data(net, test, job.data)
    backbone = dg.adaptive_stages(net)
    depths = backbone.depth_configs()
    fixed = build_engines(net, job.out / "fixed", test.classes, test.images[:16], options=BuildOptions(name="fixed-depths", include_static=False))
    fixed_ms = fixed_depth_costs(fixed.root, depths, calibration.subset(slice(0, job.cost_samples)))
    firsts = FULL + (SKIP if backbone.stages[0].can_skip else "")
    tree = dg.depth_tree(net, calibration, firsts)
    costs = dg.relative_costs(tree, fixed_ms)
    gates = dg.depth_gates_for_budget(tree, costs, job.budget)
    points = depth_points(backbone, depths, firsts, job.route_thresholds)
    manifest = build_engines(net, job.out / "engines", test.classes, test.images[:16], points=points,
                             options=BuildOptions(name=f"per-input-{backbone.variant_kind}", include_static=False),
                             routers=dg.routers(gates.gates, net.num_exits))
    runtime = Runtime(manifest)
    try:
        table = test.subset(slice(0, job.test_samples)) if job.test_samples else test
        measured = measure_points(runtime, points, table)
        shares = {p.name: depth_shares(runtime, p.name, table) for p in points if ROUTED in (p.depth or "")}
    finally:
        runtime.close()
    return depth_report(job, backbone.variant_kind, points, measured, shares, gates, fixed_ms, len(table))


def fixed_depth_costs(engines: Path, depths: list[str], data: Dataset) -> dict[str, float]:
    """Mean ms per fixed depth, exits off, batch 1, interleaved (what the gates' costs are made of)."""
    runtime = Runtime(engines)
    try:
        off = [None] * (runtime.num_exits - 1)
        measured = measure_interleaved({d: runtime_config(runtime, off, depth=d, whole=False) for d in depths}, data, progress=False, block=100)
    finally:
        runtime.close()
    return {d: m.mean_ms for d, m in measured.items()}


def depth_points(backbone: AdaptiveBackbone, depths: list[str], firsts: str, thresholds: tuple[float, ...]) -> list[OperatingPoint]:
    """Every fixed depth, then per-input depth from each stage-0 letter at each routing
    threshold: every later stage gated, and only the last one gated behind each fixed
    choice of the stages between (one gate to pay for, where only the last stage's
    variants differ much in cost or accuracy)."""
    early = len(backbone.stages) - 1
    points = [OperatingPoint(f"fixed-{d}", [None] * early, depth=d) for d in depths]
    routed = [ROUTED if stage.can_skip else FULL for stage in backbone.stages[1:]]
    shapes = ["".join(routed)]
    if routed.count(ROUTED) > 1 and routed[-1] == ROUTED:
        middles = itertools.product(*[(FULL, SKIP) if stage.can_skip else (FULL,) for stage in backbone.stages[1:-1]])
        shapes += ["".join(m) + ROUTED for m in middles]
    for first in firsts:
        for shape in shapes:
            points += [OperatingPoint(f"routed-{first + shape}@{t:g}", [None] * early, depth=first + shape, route_threshold=t) for t in thresholds]
    return points


def measure_points(runtime: Runtime, points: list[OperatingPoint], data: Dataset) -> dict[str, Measurement]:
    # fixed depths through their segments (as the routed points run), not the whole engine
    configs = {p.name: runtime_config(runtime, point_name=p.name, whole=False) for p in points}
    return measure_interleaved(configs, data, block=100)


def depth_shares(runtime: Runtime, point: str, data: Dataset, batch: int = 50) -> dict[str, float]:
    """The fraction of `data` that ran each depth configuration under a per-input point."""
    counts: Counter[str] = Counter()
    for start in range(0, len(data), batch):
        result = runtime.infer(np.ascontiguousarray(data.images[start : start + batch]), point_name=point)
        counts.update(result.depths or [])
    return {d: n / len(data) for d, n in sorted(counts.items())}


def depth_report(
    job: DynamicDepthJob, kind: str, points: list[OperatingPoint], measured: dict[str, Measurement], shares: dict[str, dict[str, float]],
    gates: dg.DepthGateResult, fixed_ms: dict[str, float], samples: int,
) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {p.name: {"depth": p.depth, "route_threshold": p.route_threshold if p.name in shares else None,
                     "accuracy": measured[p.name].accuracy, "mean_ms": measured[p.name].mean_ms, "shares": shares.get(p.name)}
            for p in points}
    fixed = {n: r for n, r in rows.items() if r["shares"] is None}
    comparisons = {n: against_fixed(r, fixed, job.same_accuracy) for n, r in rows.items() if r["shares"] is not None}
    front = pareto_front(list(rows), lambda n: rows[n]["mean_ms"], lambda n: rows[n]["accuracy"])
    faster = [c for c in comparisons.values() if c["speedup"] > 1.0]
    report = {
        "variants": kind, "checkpoint": str(job.checkpoint), "dataset": job.data, "test_samples": samples, "batch": 1, "backend": "onnxruntime",
        "calibration": list(job.calibration), "budget": job.budget, "same_accuracy": job.same_accuracy, "gate_alpha": gates.alpha,
        "gate_calibration": {"accuracy": gates.outcome.accuracy, "relative_cost": gates.outcome.relative_cost, "shares": gates.outcome.shares},
        "fixed_cost_ms": fixed_ms, "points": rows, "against_fixed": comparisons, "pareto": front,
        "best_speedup": max((c["speedup"] for c in faster), default=None),
        "beats_fixed": bool(faster),
    }
    write_json_atomic(job.out / f"dynamic-{kind}.json", report)
    plot_frontiers({f"per-input {kind}": report}, job.out / f"dynamic-{kind}.png")
    if job.results is not None:
        reports = merged_results(job.results, kind, report)
        write_json_atomic(job.results, reports)
        plot_frontiers({f"per-input {k}": r for k, r in reports.items()}, job.results.with_suffix(".png"))
    return report


def merged_results(path: Path, kind: str, report: dict[str, Any]) -> dict[str, Any]:
    """The results file's reports with `kind`'s replaced: the depth and the width runs
    share one file and one figure."""
    try:
        previous = json.loads(path.read_text()) if path.is_file() else {}
    except (json.JSONDecodeError, UnicodeDecodeError):
        previous = {}  # a broken file is rewritten, not merged
    merged = {**(previous if isinstance(previous, dict) else {}), kind: report}
    return {k: merged[k] for k in STAGE_VARIANTS if k in merged}  # depth first, then width


def against_fixed(row: dict[str, Any], fixed: dict[str, dict[str, Any]], tolerance: float = 0.0) -> dict[str, Any]:
    """The fastest fixed depth at least as accurate as `row`, less `tolerance` (a
    difference of a few test images is noise, not accuracy), else the most accurate one;
    and row's speed-up over it: above 1, row is faster at no loss of accuracy."""
    rivals = [(r["mean_ms"], n) for n, r in fixed.items() if r["accuracy"] >= row["accuracy"] - tolerance]
    name = min(rivals)[1] if rivals else max(fixed, key=lambda n: fixed[n]["accuracy"])
    rival = fixed[name]
    return {"fixed": name, "speedup": rival["mean_ms"] / row["mean_ms"], "accuracy_gain": row["accuracy"] - rival["accuracy"]}


def print_summary(report: dict[str, Any]) -> None:
    for name, row in report["points"].items():
        versus = report["against_fixed"].get(name)
        note = "" if versus is None else f"  {versus['speedup']:.3f}x vs {versus['fixed']} ({100 * versus['accuracy_gain']:+.2f} pt)"
        print(f"{name:24s} {100 * row['accuracy']:6.2f}%  {row['mean_ms']:.3f} ms{note}")
    best = report["best_speedup"]
    kind = report["variants"]
    print(f"per-input {kind} beats every fixed {kind} at equal accuracy: {report['beats_fixed']}" + (f" (best {best:.3f}x)" if best else ""))
