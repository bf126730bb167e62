"""Calibrate a trained multi-exit checkpoint for this device (edge-calibrate): temperatures,
learned gates, a measured latency profile, per-exit thresholds, and operating points
measured on the test split and written into the manifest, the static engine among them.

Everything is chosen on a calibration split held out of the training split (the same
one edge-quickstart and edge-bench hold out) and measured on the test split.
"""

from __future__ import annotations

import dataclasses
import logging
import platform
from collections.abc import Sequence
from dataclasses import dataclass
from operator import itemgetter
from pathlib import Path
from typing import Any, cast

import numpy as np
from torch import nn

from calibration import gates as gating
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Config, StaticModel, measure_interleaved, runtime_config
from calibration.exits import ExitTable, exit_logits, outcome
from calibration.int8 import PRECISION, engine_table, fastest_int8
from calibration.latency import NONE_PASS, BatchProfile, LatencyModel, profile_runtime
from calibration.plots.calibrate import plot_pareto
from calibration.temperature import ExitCalibration, calibrate_exits, expected_calibration_error, softmax
from calibration.thresholds import Plan, Target, search_thresholds
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError
from edge.frontier import most_accurate_within
from edge.manifest import MANIFEST_NAME, STATIC, Manifest, OperatingPoint, load_manifest, save_manifest
from edge.runtime import Runtime
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, load_checkpoint
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class CalibrationJob:
    checkpoint: Path  # the multi-exit checkpoint (edge-train, edge-quickstart)
    static: Path | None = None  # the static model's checkpoint: static.onnx and the reference accuracy
    data: str = "fashion-mnist"
    out: Path = Path("runs/calibrate")
    calibration_samples: int = 5000
    test_samples: int = 0  # 0: the whole test split
    budget_ms: float | None = None  # also the most accurate point within this mean batch-1 latency
    gate_drop: float = 0.5  # accuracy drop (points) the gates are trained for, when no budget is given
    profile_calls: int = 400
    int8: bool = True

    def settings(self) -> PointSettings:
        return PointSettings(CRITERIA, self.budget_ms, self.int8, self.profile_calls)


log = logging.getLogger(__name__)

CRITERIA = ("entropy", "maxprob", "gate")
# Accuracy drops (points) the named operating points allow against the final exit.
STATIC_POINT = "static"  # the operating point that runs the static engine
DROPS = {"accurate": 0.0, "careful": 0.25, "balanced": 0.5, "fast": 1.0, "saver": 2.0, "eco": 4.0}


def calibrate(job: CalibrationJob) -> dict[str, Any]:
    """Build the engines with fitted temperatures and trained gates, plan and measure every
    operating point, write them into the manifest; writes calibration.json and pareto.png
    under `job.out` and returns the report."""
    set_threads()
    spec, net, static_backbone = load_networks(job)
    calibration, test = load_splits(job, spec.input_shape, spec.classes)
    check_data(net, calibration, job.data)
    out: Path = job.out
    engines = out / "engines"

    outputs = gating.exit_outputs(net, calibration)  # one pass serves temperatures and gates
    temperatures = fit_temperatures(net, outputs, test)
    t = [row["temperature"] for row in temperatures]
    data = gating.gate_data_from(outputs, t)
    first = build(net, engines, calibration, static_backbone, t, job)
    settings = job.settings()
    gate_result = train_shipped_gates(data, t, profile(Runtime(first), calibration, settings.profile_calls)[1].model, job)

    manifest = build(net, engines, calibration, static_backbone, t, job, gate_result.gates)
    result = measure_operating_points(manifest, gating.gate_table(gate_result.gates, data, t), calibration, test, settings)
    report = make_report(str(job.checkpoint), job.data, job.budget_ms, temperatures, gates_summary(gate_result), result, test)
    write_json_atomic(out / "calibration.json", report)
    plot_pareto(report, out / "pareto.png")
    return report


@dataclass(frozen=True)
class PointSettings:
    """How the operating points are planned and measured."""

    criteria: tuple[str, ...] = CRITERIA
    budget_ms: float | None = None  # also the most accurate point within this mean batch-1 latency
    int8: bool = True
    profile_calls: int = 400


@dataclass
class MeasuredPoints:
    manifest: Manifest  # with the points written
    plans: dict[str, Plan]
    measured: dict[str, Any]
    profiles: dict[str, dict[int, BatchProfile]]
    tables: dict[str, ExitTable]
    int8_timings: dict[str, float]


def measure_operating_points(
    manifest: Manifest, fp32_table: ExitTable, calibration: Dataset, test: Dataset, settings: PointSettings,
) -> MeasuredPoints:
    """From built engines and their fp32 exit table on the calibration split: the latency
    profile, INT8 engines where asked, a plan per criterion and accuracy drop, every point
    measured on the test split and written into the manifest with the static engine's."""
    runtime = Runtime(manifest)
    profiles = {"fp32": profile(runtime, calibration, settings.profile_calls)}
    tables = {"fp32": fp32_table}
    int8_timings: dict[str, float] = {}
    if settings.int8:
        manifest, int8_timings = fastest_int8(manifest, runtime, calibration.images[:512], settings.profile_calls)
        runtime = Runtime(manifest)
        profiles[PRECISION] = profile(runtime, calibration, settings.profile_calls, PRECISION)
        tables[PRECISION] = engine_table(runtime, calibration, PRECISION, list(settings.criteria))

    models = {precision: by_batch[1].model for precision, by_batch in profiles.items()}
    # Every precision's drops count from the fp32 final exit: INT8's own loss is part of its drop.
    reference = final_accuracy(tables["fp32"])
    plans: dict[str, Plan] = {}
    for precision, table in tables.items():
        plans |= plan_points(table, models[precision], settings.budget_ms, reference, precision, settings.criteria)
    measured = measure_points(runtime, manifest, plans, test)
    manifest = write_points(manifest, plans, measured, profiles, models)
    return MeasuredPoints(manifest, plans, measured, profiles, tables, int8_timings)


def build(
    net: MultiExitNetwork, engines: Path, calibration: Dataset, static_backbone: Any, temperatures: list[float],
    job: CalibrationJob, gates: list[Any] | None = None,
) -> Manifest:
    return build_engines(
        net, engines, calibration.classes, calibration.images[:16], options=BuildOptions(name=job.checkpoint.stem),
        static_backbone=static_backbone, temperatures=temperatures, gates=gates,
    )


def load_networks(job: CalibrationJob) -> tuple[ModelSpec, MultiExitNetwork, Any]:
    spec, net, _ = load_checkpoint(job.checkpoint)
    if not isinstance(net, MultiExitNetwork):
        raise UserError(f"{job.checkpoint}: a plain backbone has no exits; train exits first (edge-train --exits ...)")
    static = load_checkpoint(job.static)[1] if job.static else None
    if static is not None and isinstance(static, MultiExitNetwork):
        raise UserError(f"{job.static}: --static takes the static model's checkpoint, this one has exits")
    return spec, net, static


def check_data(net: MultiExitNetwork, data: Dataset, source: str) -> None:
    """The data fits the network: its input shape and its number of classes."""
    if tuple(data.input_shape) != tuple(net.backbone.input_shape):
        raise UserError(f"{source} images are {data.input_shape}, the network takes {tuple(net.backbone.input_shape)}")
    classes = cast(nn.Linear, cast(nn.Sequential, net.exit_heads[0])[-1]).out_features
    if len(data.classes) != classes:
        raise UserError(f"{source} has {len(data.classes)} classes, the network has {classes}")


def load_splits(job: CalibrationJob, input_shape: Sequence[int], classes: Sequence[str]) -> tuple[Dataset, Dataset]:
    """The calibration and test splits, fitted to the network's input and checked to
    hold the classes it was trained on."""
    train_all = load_dataset(job.data, "train", input_shape, classes)
    test = load_dataset(job.data, "test", input_shape, classes)
    _, calibration = train_all.split(min(job.calibration_samples / len(train_all), 0.5), seed=0)
    if job.test_samples:
        test = test.subset(slice(0, job.test_samples))
    return calibration, test


def fit_temperatures(net: MultiExitNetwork, calibration: gating.ExitOutputs, test: Dataset) -> list[dict[str, float]]:
    """Temperatures fitted on the calibration split's logits; ECE before/after on both splits."""
    return temperature_rows(calibration.logits, calibration.labels, exit_logits(net, test), test.labels)


def temperature_rows(
    calibration_logits: list[np.ndarray], calibration_labels: np.ndarray, test_logits: list[np.ndarray], test_labels: np.ndarray,
) -> list[dict[str, float]]:
    """Each exit's temperature fitted on the calibration logits; ECE before/after on both splits."""
    fitted: list[ExitCalibration] = calibrate_exits(calibration_logits, calibration_labels)
    rows = []
    for k, (c, z) in enumerate(zip(fitted, test_logits)):
        rows.append({
            "exit": k, "temperature": c.temperature, "kept_at_one": c.kept_at_one,
            "ece_calibration_before": c.ece_before, "ece_calibration_after": c.ece_after,
            "ece_test_before": expected_calibration_error(softmax(z), test_labels),
            "ece_test_after": expected_calibration_error(softmax(z, c.temperature), test_labels),
        })
        log.info("exit %d: T=%.3f  ECE test %.4f -> %.4f", k, c.temperature, rows[-1]["ece_test_before"], rows[-1]["ece_test_after"])
    return rows


def profile(runtime: Runtime, data: Dataset, calls: int, precision: str = "fp32") -> dict[int, BatchProfile]:
    batches = sorted({1, runtime.manifest.batch.get("max", 1)})
    return profile_runtime(runtime, data.images[:512], batches, calls=calls, precision=precision)


def train_shipped_gates(data: gating.GateData, t: list[float], model: LatencyModel, job: CalibrationJob) -> gating.BudgetResult:
    """The gates the engines carry: for the budget if one is asked, else for an accuracy
    floor `--gate-drop` points under the final exit's."""
    if job.budget_ms is not None:
        return gating.gates_for_budget(data, t, model, job.budget_ms)
    final_accuracy = float((data.logits[-1].argmax(axis=1) == data.labels).mean())
    return gating.gates_for_accuracy(data, t, model, final_accuracy - job.gate_drop / 100)


def final_accuracy(table: ExitTable) -> float:
    return float((table.predictions[-1] == table.labels).mean())


def plan_points(
    table: ExitTable, model: LatencyModel, budget_ms: float | None, reference: float, precision: str = "fp32",
    criteria: Sequence[str] = CRITERIA,
) -> dict[str, Plan]:
    prefix = "" if precision == "fp32" else f"{precision}-"
    plans: dict[str, Plan] = {}
    for criterion in criteria:
        for label, drop in DROPS.items():
            target = Target(max_drop=drop / 100, reference_accuracy=reference)
            plans[f"{prefix}{criterion}-{label}"] = search_thresholds(table, criterion, model, target, precision=precision)
        if budget_ms is not None:
            target = Target(budget_ms=budget_ms)
            plans[f"{prefix}{criterion}-budget"] = search_thresholds(table, criterion, model, target, precision=precision)
    early = table.num_exits - 1
    full = outcome(table, [None] * early)
    full_ms = model.predict(full.reach_fractions, [None] * early)
    plans[f"{prefix}full"] = Plan([None] * early, "entropy", full.accuracy, full_ms, full.exit_fractions, True, precision)
    return plans


def measure_points(runtime: Runtime, manifest: Manifest, plans: dict[str, Plan], test: Dataset) -> dict[str, Any]:
    """Every point at batch 1 on the test split, interleaved with the static model and, per
    precision, the chain with every exit computed (none taken) and with every exit off:
    segment costs under the very conditions the points ran in (this machine's speed
    drifts by tens of percent between runs), to check the latency model against."""
    # Points that run the same configuration (no exit taken under any criterion: the full
    # chain) are measured once: measured apart, noise alone would rank them.
    same = {name: _configuration(plan) for name, plan in plans.items()}
    first = {key: name for name, key in reversed(same.items())}
    configs: dict[str, Config] = {
        name: runtime_config(runtime, plan.thresholds, plan.criterion, plan.precision) for name, plan in plans.items() if first[same[name]] == name
    }
    early = runtime.num_exits - 1
    for precision in sorted({p.precision for p in plans.values()}):
        configs[f"profile/computed/{precision}"] = runtime_config(runtime, [NONE_PASS] * early, precision=precision)
        configs[f"profile/off/{precision}"] = runtime_config(runtime, [None] * early, precision=precision, whole=False)
        if runtime.has_whole and precision == "fp32":
            configs["profile/whole/fp32"] = runtime_config(runtime, [None] * early, precision=precision)
    if manifest.static_model is not None:
        configs["static"] = StaticModel(manifest.path_of(manifest.static_model["file"])).config()
    log.info("measuring %d configurations on %d test images at batch 1, interleaved", len(configs), len(test))
    measured = measure_interleaved(configs, test)
    return measured | {name: measured[first[key]] for name, key in same.items()}


def _configuration(plan: Plan) -> tuple[Any, ...]:
    """What a point runs: its thresholds, and its criterion only where one is compared."""
    criterion = plan.criterion if any(t is not None for t in plan.thresholds) else None
    return tuple(plan.thresholds), criterion, plan.precision


def interleaved_model(measured: dict[str, Any], precision: str) -> LatencyModel:
    """The latency model from the profile configurations measured alongside the points."""
    computed, off = measured[f"profile/computed/{precision}"], measured[f"profile/off/{precision}"]
    early = len(computed.segment_ms) - 1
    whole = measured.get(f"profile/whole/{precision}")
    return LatencyModel(computed.segment_ms, off.segment_ms[:early], computed.mean_ms - sum(computed.segment_ms), whole.mean_ms if whole is not None else None)


def write_points(
    manifest: Manifest, plans: dict[str, Plan], measured: dict[str, Any], profiles: dict[str, dict[int, BatchProfile]],
    models: dict[str, LatencyModel],
) -> Manifest:
    """Operating points with their measured figures. `predicted_mean_ms` comes from the
    segment costs measured alongside; `profile_predicted_mean_ms` from the earlier profile."""
    alongside = {precision: interleaved_model(measured, precision) for precision in models}
    points = []
    for name, plan in plans.items():
        m = measured[name]
        points.append(OperatingPoint(name, plan.thresholds, plan.criterion, plan.precision, measured={
            "accuracy": m.accuracy, "mean_ms": m.mean_ms, "p99_ms": m.p99_ms,
            "predicted_mean_ms": alongside[plan.precision].predict(m.reach_fractions, plan.thresholds),
            "profile_predicted_mean_ms": models[plan.precision].predict(m.reach_fractions, plan.thresholds),
            "exit_fractions": m.exit_fractions, "calibration_accuracy": plan.accuracy, "batch": 1,
        }))
    if "static" in measured:  # the static engine is a point too: served where exits do not pay
        m = measured["static"]
        early = len(next(iter(plans.values())).thresholds)
        points.append(OperatingPoint(STATIC_POINT, [None] * early, measured={
            "accuracy": m.accuracy, "mean_ms": m.mean_ms, "p99_ms": m.p99_ms, "exit_fractions": m.exit_fractions, "batch": 1,
        }, engine=STATIC))
    profile = {"device": platform.processor() or platform.machine(), "threads": online_cores(), **profile_dicts(profiles)}
    default = best_point(points, measured, "balanced")
    updated = dataclasses.replace(manifest, operating_points=points, default_operating_point=default, profile=profile)
    save_manifest(updated, manifest.root / MANIFEST_NAME)
    return load_manifest(manifest.root)


def profile_dicts(profiles: dict[str, dict[int, BatchProfile]]) -> dict[str, Any]:
    return {precision: {str(b): p.to_dict() for b, p in by_batch.items()} for precision, by_batch in profiles.items()}


def best_point(points: list[OperatingPoint], measured: dict[str, Any], label: str) -> str:
    """The fastest measured point among the criteria's `label` points that take an exit
    (or run INT8) and the static engine (the model the exits are measured against:
    within any accuracy target). An fp32 point with every exit off is the chain's network
    without exits: where it is chosen, the static engine serves instead."""
    named = [p for p in points if (p.name.endswith(f"-{label}") and not _no_exit(p)) or p.engine == STATIC]
    return min(named, key=lambda p: measured[p.name].mean_ms).name if named else points[0].name


def _no_exit(point: OperatingPoint) -> bool:
    return point.precision == "fp32" and all(t is None for t in point.thresholds) and point.engine != STATIC


def exits_verdict(report: dict[str, Any]) -> str:
    """One plain line: do the exits pay on this model and this device?"""
    points = {p["name"]: p for p in report["points"]}
    default = points[report["default_operating_point"]]
    chain = [p for p in report["points"] if p["name"].endswith("-balanced")]
    if default["name"] != STATIC_POINT:
        static = points.get(STATIC_POINT)
        versus = f" ({default['mean_ms'] / static['mean_ms']:.2f}x the static engine)" if static else ""
        return f"exits pay here: the default point is {default['name']}, {default['mean_ms']:.3f} ms{versus}"
    best = min(chain, key=lambda p: p["mean_ms"]) if chain else None
    beaten = f" (the fastest exit point within 0.5 points, {best['name']}, measured {best['mean_ms']:.3f} ms)" if best else ""
    return (f"exits do not pay on this model and this device: the static engine is faster, "
            f"{default['mean_ms']:.3f} ms{beaten}; it is the default point")


def gates_summary(gate_result: gating.BudgetResult) -> dict[str, Any]:
    return {
        "alpha": gate_result.alpha, "calibration_accuracy": gate_result.accuracy,
        "predicted_ms": gate_result.predicted_ms, "feasible": gate_result.feasible,
    }


def make_report(
    source: str, data: str, budget_ms: float | None, temperatures: list[dict[str, float]], gates: dict[str, Any] | None,
    result: MeasuredPoints, test: Dataset,
) -> dict[str, Any]:
    """calibration.json: temperatures, gates (None where none were trained), profiles,
    every point measured, the default point and the verdict."""
    manifest, plans, measured, tables = result.manifest, result.plans, result.measured, result.tables
    static = measured.get("static")
    points = []
    for point in manifest.operating_points:
        row: dict[str, Any] = {"name": point.name, "criterion": point.criterion, "thresholds": point.thresholds, "precision": point.precision}
        row |= {"engine": point.engine} | point.measured
        plan = plans.get(point.name)  # the static point has no plan: nothing was predicted
        if plan is not None:
            row |= {"feasible_on_calibration": plan.feasible, "calibration_predicted_ms": plan.predicted_ms}
        points.append(row)
    report: dict[str, Any] = {
        "checkpoint": source, "data": data, "test_samples": len(test), "threads": online_cores(),
        "temperatures": temperatures,
        "gates": gates,
        "profile": profile_dicts(result.profiles),
        "calibration_exit_accuracy": {
            precision: [float((p == table.labels).mean()) for p in table.predictions] for precision, table in tables.items()
        },
        "int8_activation_ms": result.int8_timings,
        "static": static.to_dict() if static is not None else None,
        "points": points, "default_operating_point": manifest.default_operating_point,
        "manifest": str(manifest.root / MANIFEST_NAME),
    }
    report["verdict"] = exits_verdict(report)
    if budget_ms is not None:
        report["budget"] = budget_answer(budget_ms, points)
    return report


def budget_answer(budget_ms: float, points: list[dict[str, Any]]) -> dict[str, Any]:
    """The most accurate measured point within the budget, or a clear no."""
    best = most_accurate_within(points, budget_ms, itemgetter("mean_ms"), itemgetter("accuracy"))
    if best is None:
        fastest = min(points, key=lambda p: p["mean_ms"])
        return {"budget_ms": budget_ms, "met": False,
                "message": f"no operating point meets {budget_ms:.3f} ms: the fastest, {fastest['name']}, measured {fastest['mean_ms']:.3f} ms"}
    return {"budget_ms": budget_ms, "met": True, "point": best["name"], "mean_ms": best["mean_ms"], "accuracy": best["accuracy"],
            "message": f"{best['name']}: {best['accuracy']:.2%} at {best['mean_ms']:.3f} ms (budget {budget_ms:.3f} ms)"}


def print_summary(report: dict[str, Any]) -> None:
    static = report["static"]
    print("\nper-exit temperature and ECE on the test split (before -> after):")
    for row in report["temperatures"]:
        print(f"  exit {row['exit']}: T={row['temperature']:.3f}  ECE {row['ece_test_before']:.4f} -> {row['ece_test_after']:.4f}")
    if static:
        print(f"static model: {static['accuracy']:.2%}, {static['mean_ms']:.3f} ms")
    if report["int8_activation_ms"]:
        timings = ", ".join(f"{a} {ms:.3f} ms" for a, ms in report["int8_activation_ms"].items())
        print(f"int8 activations, one call with every exit computed: {timings}")
    print(f"{'point':>22} {'acc':>7} {'mean ms':>8} {'vs static':>9} {'predicted':>9} {'p99 ms':>7}  exits")
    for p in sorted(report["points"], key=lambda p: (p["precision"], p["criterion"], p["mean_ms"])):
        ratio = f"{p['mean_ms'] / static['mean_ms']:.2f}x" if static else "-"
        predicted = f"{p['predicted_mean_ms']:9.3f}" if "predicted_mean_ms" in p else f"{'-':>9}"
        print(f"{p['name']:>22} {p['accuracy']:7.2%} {p['mean_ms']:8.3f} {ratio:>9} {predicted} {p['p99_ms']:7.3f}  "
              + " ".join(f"{f:.0%}" for f in p["exit_fractions"]))
    print(report["verdict"])
    if "budget" in report:
        print("budget query: " + report["budget"]["message"])
