"""The benchmark's measurements: exits placed by measurement, every set built and run as
operating points of its manifest, interleaved with the static model (fp32 and INT8),
and the adaptive-depth version's depth x exits frontier."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration import pipeline
from calibration.bench.config import BenchConfig
from calibration.bench.models import FIXED_EXITS, FIXED_MEASURED, ModelData
from calibration.bench.report import best_within, model_report, plan_dict
from calibration.data import Dataset
from calibration.depth_exits import depth_costs, frontier, plan_depths, point_entries
from calibration.evaluate import Config, StaticModel, measure_interleaved, runtime_config
from calibration.exits import exit_table
from calibration.int8 import PRECISION as INT8
from calibration.int8 import engine_table, fastest_int8
from calibration.latency import NONE_PASS
from calibration.placement import CandidateCosts, Placement, candidate_costs, evaluate_set, place_exits
from calibration.thresholds import Target, search_thresholds
from calibration.train import exit_accuracies
from edge.manifest import Manifest, OperatingPoint
from edge.runtime import Runtime
from engines.backbone import BlockBackbone
from engines.partition import MultiExitNetwork
from engines.quantize import QuantJob, quantize_segments

log = logging.getLogger(__name__)


@dataclass
class ExitSet:
    """One exit set of one trained network, built and with its thresholds."""

    label: str  # "frozen/chosen", "frozen-conv-s2/fixed", ...
    placement: Placement
    net: MultiExitNetwork
    runtime: Runtime

def measure_model(name: str, data: ModelData, static: BlockBackbone, nets: dict[str, MultiExitNetwork], config: BenchConfig) -> dict[str, Any]:
    out = config.out / name
    static_cal = exit_accuracies(static, data.calibration)[0]
    target = Target(max_drop=(config.max_drop - config.margin) / 100, reference_accuracy=static_cal)
    sets: list[ExitSet] = []
    placements: dict[str, Any] = {}
    static_path: Path | None = None
    for mode, net in nets.items():
        candidates = pipeline.build(net, data.calibration, out / mode / "candidates", f"{name}-{mode}-candidates", static=static)
        static_path = candidates.path_of(candidates.static_model["file"])  # type: ignore[index]
        costs, whole_ratio = measure_costs(candidates, StaticModel(static_path), data.calibration.subset(slice(0, config.cost_samples)))
        table = exit_table(net, data.calibration)
        chosen = place_exits(table, costs, target, config.criterion)
        fixed = evaluate_set(table, costs, [net.splits.index(net.backbone.resolve_split(p)) for p in FIXED_EXITS], target, config.criterion, 24)
        names = net.exit_names()
        placements[mode] = {
            "candidates": names[:-1], "costs": dataclasses.asdict(costs), "whole_ratio": whole_ratio,
            "calibration_exit_accuracy": [float((p == table.labels).mean()) for p in table.predictions],
            "chosen": [names[i] for i in chosen.chosen],
            "predicted": {"chosen": plan_dict(chosen), "fixed": plan_dict(fixed)},
        }
        log.info("%s/%s: exits at %s, predicted %.3f ms (fixed %s: %.3f ms)", name, mode, placements[mode]["chosen"], chosen.plan.predicted_ms, FIXED_EXITS, fixed.plan.predicted_ms)
        built = [("chosen", chosen), ("fixed", fixed)] if mode == FIXED_MEASURED else [("chosen", chosen)]
        for kind, placement in built:
            if not placement.chosen:
                continue  # no exit pays: the static engine is the answer
            subset = net.with_exits(placement.chosen)
            manifest = pipeline.build(subset, data.calibration, out / mode / kind, f"{name}-{mode}-{kind}", static=static)
            sets.append(ExitSet(f"{mode}/{kind}", placement, subset, Runtime(manifest)))
    assert static_path is not None
    best_fp32 = min(sets, key=lambda s: (not s.placement.plan.feasible, s.placement.plan.predicted_ms))
    int8 = int8_chain(best_fp32, data, static_path, target, config.criterion)
    measured = measure_interleaved(measured_configs(static_path, sets, int8, config.criterion), data.test)
    return model_report(data, measured, sets, int8, placements, static_cal) | {"max_drop": config.max_drop / 100}

def depth_and_exits(name: str, data: ModelData, static: BlockBackbone, net: MultiExitNetwork, config: BenchConfig) -> dict[str, Any]:
    """The adaptive-depth version: every depth configuration with its exits off and at the
    thresholds that meet the target, measured against the static model, and the frontier."""
    target = Target(max_drop=(config.max_drop - config.margin) / 100, reference_accuracy=exit_accuracies(static, data.calibration)[0])
    manifest = pipeline.build(net, data.calibration, config.out / name / "adaptive", f"{name}-adaptive", static=static)
    static_model = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    depths = net.backbone.depth_configs()  # type: ignore[operator]
    costs = data.calibration.subset(slice(0, config.cost_samples))
    models, static_ms = depth_costs(Runtime(manifest), depths, static_model.config(), costs)
    points = plan_depths(net, models, static_ms, data.calibration, target, config.criterion)
    runtime = Runtime(pipeline.with_points(manifest, [p.operating_point(config.criterion) for p in points]), precisions=["fp32"])
    configs = {"static": static_model.config()} | {p.name: runtime_config(runtime, point_name=p.name) for p in points}
    measured = measure_interleaved(configs, data.test)
    static_measured = measured.pop("static")
    entries = point_entries(points, measured, static_measured)
    ratios = {e["name"]: (e["accuracy"], e["ratio"]) for e in entries} | {"static": (static_measured.accuracy, 1.0)}
    best = best_within(ratios, static_measured.accuracy, config.max_drop / 100)
    return {"static": static_measured.to_dict(), "points": entries, "frontier": frontier(measured | {"static": static_measured}),
            "best": {"point": best, "accuracy_drop_pt": 100 * (static_measured.accuracy - ratios[best][0]), "ratio": ratios[best][1]}}

def measure_costs(candidates: Manifest, static: StaticModel, data: Dataset) -> tuple[CandidateCosts, float]:
    """The chain cut at every candidate, each exit computed and each off, against the
    uncut network, interleaved; and the chain's whole engine against the static model."""
    configs = {"static": static.config()} | chain_configs("cut", candidates, None)
    # short blocks: the whole engine's ratio to the static model predicts the full point
    m = measure_interleaved(configs, data, progress=False, block=50)
    trunks = m.get("cut/trunks") or m["cut/full"]
    off = trunks.segment_ms or []
    costs = candidate_costs(m["cut/evaluated"].segment_ms or [], off[:-1], trunks.mean_ms - sum(off), m["static"].mean_ms)
    return costs, m["cut/full"].mean_ms / m["static"].mean_ms

@dataclass
class Int8Chain:
    label: str
    exits: list[str]
    runtime: Runtime
    thresholds: list[float | None]
    static_path: Path
    static_activation: str

def int8_chain(exits: ExitSet, data: ModelData, static_path: Path, target: Target, criterion: str) -> Int8Chain:
    """The chosen chain's INT8 engines with thresholds chosen on their own outputs, and the
    static model quantized the same way (same activation type, calibration images)."""
    images = data.calibration.images[:512]
    manifest, timings = fastest_int8(exits.runtime.manifest, exits.runtime, images)
    runtime = Runtime(manifest, precisions=[INT8])
    activation = min(timings, key=timings.__getitem__)
    quantized = static_path.with_name(f"static.int8-{activation}.onnx")
    quantize_segments([QuantJob(static_path, quantized, StaticModel(static_path).input_name, images, activation)])
    table = engine_table(runtime, data.calibration, INT8, sorted({"entropy", criterion}))
    cost = exits.placement.model  # the fp32 chain's costs: an approximation for the INT8 segments
    plan = search_thresholds(table, criterion, cost, target, 24, INT8)
    return Int8Chain(f"int8-{exits.label}", exits.net.exit_names()[:-1], runtime, plan.thresholds, quantized, activation)

def measured_configs(static_path: Path, sets: list[ExitSet], int8: Int8Chain, criterion: str) -> dict[str, Config]:
    """Every chain runs operating points of its manifest, as a deployment does (a point is
    resolved once; per-call overrides cost the runtime a little more each call)."""
    configs: dict[str, Config] = {"static": StaticModel(static_path).config(), "static-int8": StaticModel(int8.static_path).config()}
    for s in sets:
        configs |= chain_configs(s.label, s.runtime.manifest, s.placement.plan.thresholds, criterion, "fp32")
    return configs | chain_configs(int8.label, int8.runtime.manifest, int8.thresholds, criterion, INT8)

def chain_configs(
    label: str, manifest: Manifest, thresholds: list[float | None] | None, criterion: str = "entropy", precision: str = "fp32",
) -> dict[str, Config]:
    """The placed point (where given), every exit computed and none taken (the segment
    costs), and full depth: the whole engine where a point with every exit off runs it,
    and the chain's segments as trunks. Writes these points into the manifest (its
    folder's manifest.json) and serves them from a runtime of their own."""
    early = manifest.num_exits - 1
    points = {"point": thresholds} if thresholds is not None else {}
    points |= {"evaluated": [NONE_PASS] * early, "full": [None] * early}
    manifest = pipeline.with_points(
        manifest, [OperatingPoint(kind, t, criterion, precision) for kind, t in points.items()],
    )
    runtime = Runtime(manifest, precisions=[precision])
    configs = {f"{label}/{kind}": runtime_config(runtime, point_name=kind) for kind in points}
    if runtime.has_whole and precision == "fp32":
        configs[f"{label}/trunks"] = runtime_config(runtime, point_name="full", whole=False)
    return configs
