"""Calibrate a trained multi-exit checkpoint for this device: temperatures, learned gates,
measured latency profile, per-exit thresholds and a table of measured operating points.

    edge-calibrate --checkpoint runs/quickstart/multi_exit.pt --static runs/quickstart/static.pt

Everything is chosen on a calibration split held out of the training split (the same
one edge-quickstart and edge-bench hold out) and measured on the test split.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import platform
from pathlib import Path
from typing import Any

import numpy as np

from calibration import gates as gating
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Config, StaticModel, measure_interleaved, runtime_config
from calibration.exits import exit_logits, outcome, table_from_logits
from calibration.latency import BatchProfile, LatencyModel, profile_runtime
from calibration.temperature import ExitCalibration, calibrate_exits, expected_calibration_error, softmax
from calibration.thresholds import Plan, Target, search_thresholds
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.manifest import MANIFEST_NAME, Manifest, OperatingPoint, load_manifest, save_manifest
from edge.runtime import Runtime
from engines.build import BuildOptions, build_engines
from engines.checkpoint import load_checkpoint
from engines.partition import MultiExitNetwork
from tools._cli import run_main
from tools.calibrate_plot import plot_pareto

log = logging.getLogger("tools.calibrate")

CRITERIA = ("entropy", "maxprob", "gate")
# Accuracy drops (points) the named operating points allow against the final exit.
DROPS = {"accurate": 0.0, "careful": 0.25, "balanced": 0.5, "fast": 1.0, "saver": 2.0, "eco": 4.0}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-calibrate", description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="multi-exit checkpoint (edge-train, edge-quickstart)")
    p.add_argument("--static", type=Path, help="the static model's checkpoint, for static.onnx and the reference accuracy")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, idx:DIR, folder:DIR")
    p.add_argument("--out", type=Path, default=Path("runs/calibrate"))
    p.add_argument("--calibration-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--budget-ms", type=float, help="also find the most accurate point within this mean batch-1 latency")
    p.add_argument("--gate-drop", type=float, default=0.5, help="accuracy drop (points) the gates are trained for, when no budget is given")
    p.add_argument("--profile-calls", type=int, default=400)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    net, static_backbone = load_networks(args)
    calibration, test = load_splits(args)
    out: Path = args.out

    temperatures = fit_temperatures(net, calibration, test)
    t = [row["temperature"] for row in temperatures]
    data = gating.gate_data(net, calibration, t)
    engines = out / "engines"
    first = build_engines(net, engines, calibration.classes, calibration.images[:16], options=BuildOptions(name=args.checkpoint.stem),
                          static_backbone=static_backbone, temperatures=t)
    model = profile(Runtime(first), calibration, args)[1].model

    table = table_from_logits(data.logits, data.labels, t)
    final_accuracy = float((table.predictions[-1] == table.labels).mean())
    gate_result = train_shipped_gates(data, t, model, final_accuracy, args)
    manifest = build_engines(net, engines, calibration.classes, calibration.images[:16], options=BuildOptions(name=args.checkpoint.stem),
                             static_backbone=static_backbone, temperatures=t, gates=gate_result.gates)
    runtime = Runtime(manifest)
    profiles = profile(runtime, calibration, args)
    model = profiles[1].model

    table = gating.gate_table(gate_result.gates, data, t)
    plans = plan_points(table, model, args.budget_ms)
    measured = measure_points(runtime, manifest, plans, test)
    manifest = write_points(manifest, plans, measured, profiles, model)
    report = make_report(args, temperatures, gate_result, plans, measured, profiles, manifest, test)
    write_json_atomic(out / "calibration.json", report)
    plot_pareto(report, out / "pareto.png")
    print_summary(report)
    print(f"wrote {engines / MANIFEST_NAME}, {out / 'calibration.json'} and {out / 'pareto.png'}")
    return 0


def load_networks(args: argparse.Namespace) -> tuple[MultiExitNetwork, Any]:
    _, net, _ = load_checkpoint(args.checkpoint)
    if not isinstance(net, MultiExitNetwork):
        raise SystemExit(f"{args.checkpoint}: not a multi-exit checkpoint (it has no split points)")
    static = load_checkpoint(args.static)[1] if args.static else None
    return net, static


def load_splits(args: argparse.Namespace) -> tuple[Dataset, Dataset]:
    train_all = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    _, calibration = train_all.split(min(args.calibration_samples / len(train_all), 0.5), seed=0)
    if args.test_samples:
        test = test.subset(slice(0, args.test_samples))
    return calibration, test


def fit_temperatures(net: MultiExitNetwork, calibration: Dataset, test: Dataset) -> list[dict[str, float]]:
    """Temperatures fitted on the calibration split; ECE before/after on both splits."""
    fitted: list[ExitCalibration] = calibrate_exits(exit_logits(net, calibration), calibration.labels)
    test_logits = exit_logits(net, test)
    rows = []
    for k, (c, z) in enumerate(zip(fitted, test_logits)):
        rows.append({
            "exit": k, "temperature": c.temperature,
            "ece_calibration_before": c.ece_before, "ece_calibration_after": c.ece_after,
            "ece_test_before": expected_calibration_error(softmax(z), test.labels),
            "ece_test_after": expected_calibration_error(softmax(z, c.temperature), test.labels),
        })
        log.info("exit %d: T=%.3f  ECE test %.4f -> %.4f", k, c.temperature, rows[-1]["ece_test_before"], rows[-1]["ece_test_after"])
    return rows


def profile(runtime: Runtime, data: Dataset, args: argparse.Namespace) -> dict[int, BatchProfile]:
    batches = sorted({1, runtime.manifest.batch.get("max", 1)})
    return profile_runtime(runtime, data.images[:512], batches, calls=args.profile_calls)


def train_shipped_gates(data: gating.GateData, t: list[float], model: LatencyModel, final_accuracy: float, args: argparse.Namespace) -> gating.BudgetResult:
    if args.budget_ms is not None:
        result = gating.gates_for_budget(data, t, model, args.budget_ms)
    else:
        result = gating.gates_for_accuracy(data, t, model, final_accuracy - args.gate_drop / 100)
    return result


def plan_points(table: Any, model: LatencyModel, budget_ms: float | None) -> dict[str, Plan]:
    plans: dict[str, Plan] = {}
    for criterion in CRITERIA:
        for label, drop in DROPS.items():
            plans[f"{criterion}-{label}"] = search_thresholds(table, criterion, model, Target(max_drop=drop / 100))
        if budget_ms is not None:
            plans[f"{criterion}-budget"] = search_thresholds(table, criterion, model, Target(budget_ms=budget_ms))
    early = table.num_exits - 1
    full = outcome(table, [None] * early)
    plans["full"] = Plan([None] * early, "entropy", full.accuracy, model.predict(full.reach_fractions, [None] * early), full.exit_fractions, True)
    return plans


def measure_points(runtime: Runtime, manifest: Manifest, plans: dict[str, Plan], test: Dataset) -> dict[str, Any]:
    configs: dict[str, Config] = {n: runtime_config(runtime, p.thresholds, p.criterion) for n, p in plans.items()}
    if manifest.static_model is not None:
        configs["static"] = StaticModel(manifest.path_of(manifest.static_model["file"])).config()
    log.info("measuring %d configurations on %d test images at batch 1, interleaved", len(configs), len(test))
    return measure_interleaved(configs, test)


def write_points(manifest: Manifest, plans: dict[str, Plan], measured: dict[str, Any], profiles: dict[int, BatchProfile], model: LatencyModel) -> Manifest:
    points = []
    for name, plan in plans.items():
        m = measured[name]
        points.append(OperatingPoint(name, plan.thresholds, plan.criterion, measured={
            "accuracy": m.accuracy, "mean_ms": m.mean_ms, "p99_ms": m.p99_ms,
            "predicted_mean_ms": model.predict(m.reach_fractions, plan.thresholds),
            "exit_fractions": m.exit_fractions, "calibration_accuracy": plan.accuracy, "batch": 1,
        }))
    profile = {"device": platform.processor() or platform.machine(), "threads": online_cores(), **{str(b): p.to_dict() for b, p in profiles.items()}}
    default = best_point(points, measured, "balanced")
    updated = dataclasses.replace(manifest, operating_points=points, default_operating_point=default, profile=profile)
    save_manifest(updated, manifest.root / MANIFEST_NAME)
    return load_manifest(manifest.root)


def best_point(points: list[OperatingPoint], measured: dict[str, Any], label: str) -> str:
    """The fastest measured point among the criteria's `label` points."""
    named = [p for p in points if p.name.endswith(f"-{label}")]
    return min(named, key=lambda p: measured[p.name].mean_ms).name if named else points[0].name


def make_report(
    args: argparse.Namespace, temperatures: list[dict[str, float]], gate_result: gating.BudgetResult, plans: dict[str, Plan],
    measured: dict[str, Any], profiles: dict[int, BatchProfile], manifest: Manifest, test: Dataset,
) -> dict[str, Any]:
    static = measured.get("static")
    points = []
    for point in manifest.operating_points:
        plan = plans[point.name]
        row = {"name": point.name, "criterion": point.criterion, "thresholds": point.thresholds, "precision": point.precision}
        row |= point.measured | {"feasible_on_calibration": plan.feasible, "calibration_predicted_ms": plan.predicted_ms}
        points.append(row)
    report: dict[str, Any] = {
        "checkpoint": str(args.checkpoint), "data": args.data, "test_samples": len(test), "threads": online_cores(),
        "temperatures": temperatures,
        "gates": {"alpha": gate_result.alpha, "calibration_accuracy": gate_result.accuracy, "predicted_ms": gate_result.predicted_ms},
        "profile": {str(b): p.to_dict() for b, p in profiles.items()},
        "static": static.to_dict() if static is not None else None,
        "points": points, "default_operating_point": manifest.default_operating_point,
        "manifest": str(manifest.root / MANIFEST_NAME),
    }
    if args.budget_ms is not None:
        report["budget"] = budget_answer(args.budget_ms, points)
    return report


def budget_answer(budget_ms: float, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate measured point within the budget, or a clear no."""
    within = [p for p in points if p["mean_ms"] <= budget_ms]
    if not within:
        fastest = min(points, key=lambda p: p["mean_ms"])
        return {"budget_ms": budget_ms, "met": False,
                "message": f"no operating point meets {budget_ms:.3f} ms: the fastest, {fastest['name']}, measured {fastest['mean_ms']:.3f} ms"}
    best = max(within, key=lambda p: (p["accuracy"], -p["mean_ms"]))
    return {"budget_ms": budget_ms, "met": True, "point": best["name"], "mean_ms": best["mean_ms"], "accuracy": best["accuracy"],
            "message": f"{best['name']}: {best['accuracy']:.2%} at {best['mean_ms']:.3f} ms (budget {budget_ms:.3f} ms)"}


def print_summary(report: dict[str, Any]) -> None:
    static = report["static"]
    print("\nper-exit temperature and ECE on the test split (before -> after):")
    for row in report["temperatures"]:
        print(f"  exit {row['exit']}: T={row['temperature']:.3f}  ECE {row['ece_test_before']:.4f} -> {row['ece_test_after']:.4f}")
    if static:
        print(f"static model: {static['accuracy']:.2%}, {static['mean_ms']:.3f} ms")
    print(f"{'point':>18} {'acc':>7} {'mean ms':>8} {'vs static':>9} {'predicted':>9} {'p99 ms':>7}  exits")
    for p in sorted(report["points"], key=lambda p: (p["criterion"], p["mean_ms"])):
        ratio = f"{p['mean_ms'] / static['mean_ms']:.2f}x" if static else "-"
        print(f"{p['name']:>18} {p['accuracy']:7.2%} {p['mean_ms']:8.3f} {ratio:>9} {p['predicted_mean_ms']:9.3f} {p['p99_ms']:7.3f}  "
              + " ".join(f"{f:.0%}" for f in p["exit_fractions"]))
    if "budget" in report:
        print("budget query: " + report["budget"]["message"])


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
