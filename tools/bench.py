"""Benchmark: early exits on converged models against their static model, onnxruntime
on the CPU, batch 1. Exits are placed by measurement (from a candidate exit after
every block, the set with the lowest predicted mean latency at the accuracy target),
trained on the frozen backbone (distilled from the final exit), and compared with the
fixed `layer1,layer2` set; fp32 and INT8 (against the static model quantized the same
way).

    edge-bench --train-only     # train (checkpoints cached under --out)
    edge-bench                  # place exits, build, measure, write docs/results/bench*.json
    edge-bench --rules          # then: exit decision rules compared on the placed exits
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration import pipeline
from calibration.data import Dataset, fit_images, load_dataset
from calibration.depth_exits import depth_costs, frontier, plan_depths, point_entries
from calibration.evaluate import Config, Measurement, StaticModel, measure_interleaved, runtime_config
from calibration.exits import exit_table, oracle_reach, predicted_latency
from calibration.int8 import PRECISION as INT8
from calibration.int8 import engine_table, fastest_int8
from calibration.latency import NONE_PASS, LatencyModel
from calibration.placement import CandidateCosts, Placement, candidate_costs, evaluate_set, place_exits
from calibration.plots.bench import plot_bench, plot_depth_frontiers
from calibration.thresholds import Target, search_thresholds
from calibration.train import Distillation, TrainConfig, exit_accuracies, set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError
from edge.manifest import Manifest, OperatingPoint
from edge.runtime import Runtime
from engines.adaptive import make_adaptive
from engines.backbone import BlockBackbone
from engines.heads import HeadSpec
from engines.partition import MultiExitNetwork
from engines.quantize import QuantJob, quantize_segments
from tools import bench_rules
from tools._cli import run_main

log = logging.getLogger("tools.bench")


@dataclass(frozen=True)
class ModelRecipe:
    """How one benchmark model is trained: the static network as far as this machine
    allows, then exit heads after every candidate block."""

    source: str
    epochs: int  # the static network's
    train_samples: int = 0  # 0: the whole training pool (the training split less the calibration split)
    input_shape: tuple[int, int, int] | None = None  # None: the data's own
    exit_samples: int = 0  # 0: as train_samples
    test_samples: int = 0  # 0: the whole test split
    adaptive_lr: float = 0.0  # > 0: with --depth-frontier, an adaptive-depth version too (seed 003), from scratch for the same epochs at this lr
    kwargs: dict[str, Any] = field(default_factory=dict)


MODELS = {
    # the ResNet-20 class: about 0.4 ms per image at batch 1 on 2 cores
    # lr 0.2 for the adaptive version: Algorithm 1 weighs the super-net's cross-entropy by 0.5
    "resnet20": ModelRecipe("resnet20", epochs=8, adaptive_lr=0.2),
    # the larger: 27 blocks, about 1.2 ms
    "resnet56": ModelRecipe("resnet56", epochs=4, train_samples=40000, exit_samples=20000),
    # realistic compute: torchvision's ResNet-18 at its standard stem, Fashion-MNIST at 3x96x96
    "tv_resnet18-96": ModelRecipe(
        "torchvision:resnet18", epochs=2, train_samples=40000, input_shape=(3, 96, 96), exit_samples=15000, test_samples=5000,
    ),
}
DISTILL = Distillation(weight=0.5, temperature=3.0)


@dataclass(frozen=True)
class ExitRecipe:
    """How exit heads are trained: on the frozen backbone, distilled from the final exit,
    so the final exit stays the static model. Joint fine-tuning was measured too and cost
    the final exit 1.2-3.2 points (docs/bench.md): not kept."""

    head: HeadSpec
    epochs: int


EXIT_RECIPES = {
    "frozen": ExitRecipe(HeadSpec(), epochs=1),  # seed 000's pool + linear head
    # a conv3x3-BN-ReLU (32 channels) at stride 2 before pooling: on resnet20 as accurate as
    # at stride 1 (docs/bench.md) for a quarter of the head's cost; 4 epochs: +6 points at
    # the first exit over 1
    "frozen-conv-s2": ExitRecipe(HeadSpec(conv_channels=32, conv_stride=2), epochs=4),
}
# the adaptive-depth version's exit heads (after layer1 and layer2), and their checkpoint's name
ADAPTIVE_EXITS = ("frozen-conv", ExitRecipe(HeadSpec(conv_channels=32), epochs=4))
FIXED_EXITS = ["layer1", "layer2"]
FIXED_MEASURED = "frozen-conv-s2"  # the recipe whose fixed set is built and measured too (all are predicted)


@dataclass
class ModelData:
    train: Dataset
    exit_train: Dataset
    calibration: Dataset
    test: Dataset


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--train-only", action="store_true", help="train and checkpoint, measure nothing")
    p.add_argument("--results", type=Path, default=Path("docs/results"), help="where bench.json, bench.png and bench-summary.json go")
    p.add_argument("--max-drop", type=float, default=0.5, help="accuracy target: points below the static model")
    p.add_argument("--margin", type=float, default=0.15, help="points kept in hand when choosing on the calibration split")
    p.add_argument("--criterion", default="entropy", choices=["entropy", "maxprob"])
    p.add_argument("--cost-samples", type=int, default=1000, help="calibration images timed for the candidate costs")
    p.add_argument("--rules", action="store_true",
                   help="compare exit decision rules on each model's placed exits (after edge-bench; writes bench-rules.json)")
    p.add_argument("--depth-frontier", action="store_true",
                   help="also an adaptive-depth version of the models that have one (resnet20): depth and exits on one frontier")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    names = args.models.split(",")
    unknown = [n for n in names if n not in MODELS]
    if unknown:
        raise SystemExit(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    train_all = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    # the 5000 images the quickstart and edge-calibrate hold out too (a fifth of a small dataset)
    train_pool, calibration = train_all.split(min(5000, len(train_all) // 5) / len(train_all), seed=0)
    if args.rules:
        return compare_rules(names, train_pool, calibration, test, args)
    results: dict[str, Any] = {}
    for name in names:
        recipe = MODELS[name]
        data = model_data(recipe, train_pool, calibration, test)
        static, nets = train_model(recipe, data, args.out / name)
        adaptive = train_adaptive(recipe, data, args.out / name) if recipe.adaptive_lr and args.depth_frontier else None
        if not args.train_only:
            results[name] = measure_model(name, data, static, nets, args)
            if adaptive is not None:
                results[name]["depth_and_exits"] = depth_and_exits(name, data, static, adaptive, args)
    if not args.train_only:
        report = {"dataset": args.data, "backend": "onnxruntime CPU", "threads": online_cores(), "max_drop_pt": args.max_drop,
                  "criterion": args.criterion, "models": results}
        write_json_atomic(args.results / "bench.json", report)
        write_json_atomic(args.results / "bench-summary.json", [summary_entry(name, r) for name, r in results.items()])
        plot_bench(report, args.results / "bench.png")
        depth = plot_depth_frontiers(report, args.results / "bench-depth.png")
        print_summary(report)
        print(f"wrote bench.json, bench.png{', bench-depth.png' if depth else ''} and bench-summary.json to {args.results}")
    return 0


def compare_rules(names: list[str], pool: Dataset, calibration: Dataset, test: Dataset, args: argparse.Namespace) -> int:
    bench = bench_rules.read_bench(args.results)
    target = (args.max_drop - args.margin) / 100
    report: dict[str, Any] = {"target_pt": 100 * target, "predicted": "from the costs in bench.json", "models": {}}
    for name in names:
        if name not in bench["models"]:
            raise UserError(f"{name} is not in {args.results / 'bench.json'}; run edge-bench --models {name} first")
        data = model_data(MODELS[name], pool, calibration, test)
        _, nets = train_model(MODELS[name], data, args.out / name)
        report["models"][name] = bench_rules.model_rules(bench["models"][name], FIXED_MEASURED, nets[FIXED_MEASURED], data.calibration, data.test, target)
    bench_rules.write_rules(args.results, report)
    return 0


def model_data(recipe: ModelRecipe, pool: Dataset, calibration: Dataset, test: Dataset) -> ModelData:
    """The model's splits, resized to its input shape (only the images it uses). Pool
    images the model does not train on join the calibration split: thresholds held to a
    0.5-point target need more than 5000 images to hold on the test split."""
    train = pool.subset(slice(0, recipe.train_samples or len(pool)))
    exit_train = train.subset(slice(0, recipe.exit_samples or len(train)))
    unused = pool.subset(slice(len(train), None))
    calibration = dataclasses.replace(
        calibration, images=np.concatenate([calibration.images, unused.images]), labels=np.concatenate([calibration.labels, unused.labels]),
    )
    test = test.subset(slice(0, recipe.test_samples or len(test)))
    parts = [train, exit_train, calibration, test]
    if recipe.input_shape is not None and tuple(recipe.input_shape) != train.input_shape:
        parts = [dataclasses.replace(d, images=fit_images(d.images, recipe.input_shape)) for d in parts]
        parts[1] = parts[0].subset(slice(0, len(exit_train)))  # a view, not a second copy
    return ModelData(*parts)


def candidate_exits(backbone: BlockBackbone) -> list[int | str]:
    """Every block inside a stage, the last one excepted (its exit is the final one)."""
    inside: list[int | str] = [n for n in backbone.block_names if any(n.startswith(f"{stage}.") for stage in backbone.stage_starts)]
    return inside[:-1]


def train_model(recipe: ModelRecipe, data: ModelData, out: Path) -> tuple[BlockBackbone, dict[str, MultiExitNetwork]]:
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.source, data.train, **recipe.kwargs)
    static = pipeline.static_model(spec, data.train, cfg, out / "static.pt")
    exit_spec = dataclasses.replace(spec, split_points=candidate_exits(static))
    nets = {}
    for name, exits in EXIT_RECIPES.items():
        head_spec = dataclasses.replace(exit_spec, head=exits.head.to_dict() if exits.head != HeadSpec() else {})
        nets[name] = pipeline.multi_exit_model(
            head_spec, "frozen", data.exit_train, dataclasses.replace(cfg, epochs=exits.epochs), out / f"{name}.pt",
            static=static, distill=DISTILL,
        )
    return static, nets


def train_adaptive(recipe: ModelRecipe, data: ModelData, out: Path) -> MultiExitNetwork:
    """The same network with skippable sub-paths, trained from scratch by skip-aware
    self-distillation for the static network's epochs, then exit heads after every stage
    but the last on the frozen backbone, serving every depth."""
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.source, data.train, **recipe.kwargs)
    spec = dataclasses.replace(spec, skippable=make_adaptive(spec.build_backbone()).skippable)
    backbone = pipeline.adaptive_model(spec, data.train, dataclasses.replace(cfg, lr=recipe.adaptive_lr), out / "adaptive.pt")
    label, exits = ADAPTIVE_EXITS
    return pipeline.adaptive_exits(
        spec, backbone, data.exit_train, dataclasses.replace(cfg, epochs=exits.epochs), out / f"adaptive-{label}.pt",
        head=exits.head, distill=DISTILL,
    )


# --- measurement ---------------------------------------------------------------------


@dataclass
class ExitSet:
    """One exit set of one trained network, built and with its thresholds."""

    label: str  # "frozen/chosen", "frozen-conv-s2/fixed", ...
    placement: Placement
    net: MultiExitNetwork
    runtime: Runtime


def measure_model(name: str, data: ModelData, static: BlockBackbone, nets: dict[str, MultiExitNetwork], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / name
    static_cal = exit_accuracies(static, data.calibration)[0]
    target = Target(max_drop=(args.max_drop - args.margin) / 100, reference_accuracy=static_cal)
    sets: list[ExitSet] = []
    placements: dict[str, Any] = {}
    static_path: Path | None = None
    for mode, net in nets.items():
        candidates = pipeline.build(net, data.calibration, out / mode / "candidates", f"{name}-{mode}-candidates", static=static)
        static_path = candidates.path_of(candidates.static_model["file"])  # type: ignore[index]
        costs, whole_ratio = measure_costs(candidates, StaticModel(static_path), data.calibration.subset(slice(0, args.cost_samples)))
        table = exit_table(net, data.calibration)
        chosen = place_exits(table, costs, target, args.criterion)
        fixed = evaluate_set(table, costs, [net.splits.index(net.backbone.resolve_split(p)) for p in FIXED_EXITS], target, args.criterion, 24)
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
    int8 = int8_chain(best_fp32, data, static_path, target, args.criterion)
    measured = measure_interleaved(measured_configs(static_path, sets, int8, args.criterion), data.test)
    return model_report(data, measured, sets, int8, placements, static_cal) | {"max_drop": args.max_drop / 100}


def depth_and_exits(name: str, data: ModelData, static: BlockBackbone, net: MultiExitNetwork, args: argparse.Namespace) -> dict[str, Any]:
    """The adaptive-depth version: every depth configuration with its exits off and at the
    thresholds that meet the target, measured against the static model, and the frontier."""
    target = Target(max_drop=(args.max_drop - args.margin) / 100, reference_accuracy=exit_accuracies(static, data.calibration)[0])
    manifest = pipeline.build(net, data.calibration, args.out / name / "adaptive", f"{name}-adaptive", static=static)
    static_model = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    depths = net.backbone.depth_configs()  # type: ignore[operator]
    costs = data.calibration.subset(slice(0, args.cost_samples))
    models, static_ms = depth_costs(Runtime(manifest), depths, static_model.config(), costs)
    points = plan_depths(net, models, static_ms, data.calibration, target, args.criterion)
    runtime = Runtime(pipeline.with_points(manifest, [p.operating_point(args.criterion) for p in points]), precisions=["fp32"])
    configs = {"static": static_model.config()} | {p.name: runtime_config(runtime, point_name=p.name) for p in points}
    measured = measure_interleaved(configs, data.test)
    static_measured = measured.pop("static")
    entries = point_entries(points, measured, static_measured)
    ratios = {e["name"]: (e["accuracy"], e["ratio"]) for e in entries} | {"static": (static_measured.accuracy, 1.0)}
    best = _best_within(ratios, static_measured.accuracy, args.max_drop / 100)
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


def plan_dict(p: Placement) -> dict[str, Any]:
    return {"exits": p.chosen, "thresholds": p.plan.thresholds, "calibration_accuracy": p.plan.accuracy,
            "predicted_ms": p.plan.predicted_ms, "feasible": p.plan.feasible, "exit_fractions": p.plan.exit_fractions}


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


def latency_model(evaluated: Measurement, trunks: Measurement, whole_ms: float | None) -> LatencyModel:
    """The chain's per-segment costs from the same run (every exit computed, every exit
    off), and the whole engine's call where a point with every exit off runs it."""
    trunk_ms = trunks.segment_ms or []
    return LatencyModel(evaluated.segment_ms or [], trunk_ms[:-1], trunks.mean_ms - sum(trunk_ms), whole_ms)


def point_report(
    measured: dict[str, Measurement], label: str, thresholds: list[float | None], static_ms: float, whole_ratio: float | None,
) -> dict[str, Any]:
    """A point, and the chain at full depth: the whole engine where there is one (predicted
    from its ratio to the static model in the costs run), else the chain as trunks."""
    point, full = measured[f"{label}/point"], measured[f"{label}/full"]
    trunks = measured.get(f"{label}/trunks") or full  # INT8 has no whole engine: its full point is the chain
    model = latency_model(measured[f"{label}/evaluated"], trunks, full.mean_ms if whole_ratio is not None else None)
    early = len(full.exit_fractions) - 1
    full_predicted = whole_ratio * static_ms if whole_ratio is not None else model.predict([1.0] * (early + 1), [None] * early)
    return {
        "point": point.to_dict() | {"thresholds": thresholds, "predicted_ms": model.predict(point.reach_fractions, thresholds),
                                    "ratio": point.mean_ms / static_ms},
        "full": full.to_dict() | {"predicted_ms": full_predicted, "ratio": full.mean_ms / static_ms, "whole_engine": whole_ratio is not None},
        "chain_full_ratio": trunks.mean_ms / static_ms,
        "model": model.to_dict(),
    }


def model_report(
    data: ModelData, measured: dict[str, Measurement], sets: list[ExitSet], int8: Int8Chain, placements: dict[str, Any], static_cal: float,
) -> dict[str, Any]:
    static = measured["static"]
    report: dict[str, Any] = {
        "test_samples": len(data.test), "static": static.to_dict() | {"calibration_accuracy": static_cal},
        "static_int8": measured["static-int8"].to_dict() | {"activation": int8.static_activation},
        "placements": placements, "sets": {},
    }
    for s in sets:
        whole = placements[s.label.split("/")[0]]["whole_ratio"] if s.runtime.has_whole else None
        entry = point_report(measured, s.label, s.placement.plan.thresholds, static.mean_ms, whole)
        table = exit_table(s.net, data.test)
        oracle = entry["model"]["overhead_ms"] + predicted_latency(oracle_reach(table), entry["model"]["segment_ms"])
        entry |= {"exits": s.net.exit_names()[:-1], "oracle_ms": oracle, "oracle_ratio": oracle / static.mean_ms,
                  "test_exit_accuracy": [float((p == table.labels).mean()) for p in table.predictions]}
        report["sets"][s.label] = entry
    entry = point_report(measured, int8.label, int8.thresholds, measured["static-int8"].mean_ms, None)
    report["sets"][int8.label] = entry | {"exits": int8.exits}
    return report


def summary_entry(name: str, r: dict[str, Any]) -> dict[str, Any]:
    """The acceptance figures of one model. The static engine is a candidate for the best
    point too (ratio 1): where no exit set meets the target faster, it is the answer."""
    static = r["static"]
    chains = {k: v for k, v in r["sets"].items() if not k.startswith("int8-")}
    fp32 = {k: (v["point"]["accuracy"], v["point"]["ratio"]) for k, v in chains.items()} | {"static": (static["accuracy"], 1.0)}
    best = _best_within(fp32, static["accuracy"], r["max_drop"])
    int8_label = next(k for k in r["sets"] if k.startswith("int8-"))
    int8_point = r["sets"][int8_label]["point"]
    int8 = {int8_label: (int8_point["accuracy"], int8_point["ratio"]), "static-int8": (r["static_int8"]["accuracy"], 1.0)}
    best8 = _best_within(int8, static["accuracy"], r["max_drop"])
    errors = [abs(v[kind]["mean_ms"] / v[kind]["predicted_ms"] - 1) for v in r["sets"].values() for kind in ("point", "full")]
    oracle = min(chains, key=lambda k: chains[k]["oracle_ratio"])
    entry: dict[str, Any] = {
        "model": name,
        "static_accuracy": static["accuracy"],
        "static_ms": static["mean_ms"],
        "oracle_ratio": chains[oracle]["oracle_ratio"],
        "full_depth_ratio": max(v["full"]["ratio"] for v in chains.values()),
        "best_fp32": {"point": best, "accuracy_drop_pt": 100 * (static["accuracy"] - fp32[best][0]), "ratio": fp32[best][1]},
        "best_int8": {"point": best8, "accuracy_drop_pt": 100 * (static["accuracy"] - int8[best8][0]), "ratio_vs_static_int8": int8[best8][1],
                      "static_int8_ratio": r["static_int8"]["mean_ms"] / static["mean_ms"]},
        "worst_predicted_error": max(errors),
    }
    if best in chains:
        entry["best_fp32"] |= {"exits": chains[best]["exits"], "vs_own_oracle": chains[best]["point"]["mean_ms"] / chains[best]["oracle_ms"]}
    if "depth_and_exits" in r:  # its own run: its ratio is against the static model timed there
        entry["depth_and_exits"] = r["depth_and_exits"]["best"]
    return entry


def _best_within(points: dict[str, tuple[float, float]], static_accuracy: float, max_drop: float) -> str:
    """The fastest point at most `max_drop` below the static model (the most accurate if none is)."""
    within = [k for k, (accuracy, _) in points.items() if static_accuracy - accuracy <= max_drop + 1e-12]
    if not within:
        return max(points, key=lambda k: points[k][0])
    return min(within, key=lambda k: points[k][1])


def print_summary(report: dict[str, Any]) -> None:
    for name, r in report["models"].items():
        static = r["static"]
        print(f"\n== {name}: static {static['accuracy']:.2%}, {static['mean_ms']:.3f} ms (batch 1, {r['test_samples']} test images); "
              f"static int8 {r['static_int8']['accuracy']:.2%}, {r['static_int8']['mean_ms']:.3f} ms")
        for mode, p in r["placements"].items():
            print(f"  {mode}: exits placed at {', '.join(p['chosen']) or 'none (static)'}; predicted {p['predicted']['chosen']['predicted_ms']:.3f} ms"
                  f" against {p['predicted']['fixed']['predicted_ms']:.3f} ms at {', '.join(FIXED_EXITS)}")
        for label, s in r["sets"].items():
            point, full = s["point"], s["full"]
            oracle = f", oracle {s['oracle_ratio']:.2f}x" if "oracle_ratio" in s else ""
            print(f"  {label:>22}: {point['accuracy']:.2%} {point['mean_ms']:.3f} ms ({point['ratio']:.2f}x, predicted {point['predicted_ms']:.3f})"
                  f"  full depth {full['ratio']:.3f}x (chain {s['chain_full_ratio']:.3f}x){oracle}  exits {', '.join(f'{f:.0%}' for f in point['exit_fractions'])}")
        if "depth_and_exits" in r:
            print_depth_frontier(r["depth_and_exits"])


def print_depth_frontier(d: dict[str, Any]) -> None:
    front = set(d["frontier"])
    print(f"  adaptive depth x exits (static {d['static']['accuracy']:.2%}, {d['static']['mean_ms']:.3f} ms in that run; * = on the frontier):")
    for p in sorted(d["points"], key=lambda p: p["ratio"]):
        print(f"    {'*' if p['name'] in front else ' '} {p['name']:>10}: {p['accuracy']:.2%} ({-p['accuracy_drop_pt']:+.2f} pt) {p['ratio']:.2f}x"
              f" (predicted {p['predicted_ratio']:.2f}x)  exits {', '.join(f'{f:.0%}' for f in p['exit_fractions'])}")
    print(f"    best within the target: {d['best']['point']} {d['best']['ratio']:.2f}x, {-d['best']['accuracy_drop_pt']:+.2f} pt")


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
