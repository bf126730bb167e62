"""Benchmark: static model vs the segment chain (full depth and entropy exits) on
onnxruntime, for a ResNet-20-class and a larger model; exits trained frozen, jointly,
jointly with self-distillation, and jointly with conv heads.

    edge-bench --train-only     # train (checkpoints cached under --out)
    edge-bench                  # build, measure, write bench.json and bench.png
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.evaluate import (
    Config, Measurement, StaticModel, measure_interleaved, measure_throughput, runtime_config, segment_latencies,
)
from calibration.exits import exit_table, oracle_reach, predicted_latency
from calibration.latency import NONE_PASS
from calibration.train import Distillation, TrainConfig, set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.runtime import Runtime
from engines.backbone import BlockBackbone
from engines.heads import HeadSpec
from engines.partition import MultiExitNetwork
from tools._cli import run_main
from tools.bench_plot import plot_bench

log = logging.getLogger("tools.bench")


@dataclass(frozen=True)
class ModelRecipe:
    arch: str
    kwargs: dict[str, Any]
    train_samples: int
    epochs: int  # the static backbone's
    exit_epochs: int = 1  # frozen heads, or joint fine-tuning from the static backbone
    joint_lr: float = 0.05


MODELS = {
    "resnet20": ModelRecipe("resnet20", {}, 30000, 2),
    # the larger model: about 2.7 ms per image at batch 1 on 2 cores
    "resnet32-wide": ModelRecipe("resnet32", {"widths": [32, 64, 128]}, 15000, 2),
}
SPLITS = ["layer1", "layer2"]


@dataclass(frozen=True)
class ExitRecipe:
    mode: str  # "frozen" or "joint"
    distill: Distillation | None = None
    head: HeadSpec = HeadSpec()


VARIANTS = {
    "frozen": ExitRecipe("frozen"),
    "joint": ExitRecipe("joint"),
    "joint-distill": ExitRecipe("joint", Distillation(weight=0.5, temperature=3.0)),
    # a 16-channel conv3x3 before pooling: about one backbone conv at the first exit
    "joint-convhead": ExitRecipe("joint", head=HeadSpec(conv_channels=16)),
}
THRESHOLDS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.8, 1.1]


@dataclass
class Variant:
    """One multi-exit network under test, with its engines loaded."""

    mode: str
    net: MultiExitNetwork
    runtime: Runtime
    calibrated: float | None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated exit recipes, from {', '.join(VARIANTS)}")
    p.add_argument("--train-only", action="store_true", help="train and checkpoint, measure nothing")
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    p.add_argument("--max-drop", type=float, default=0.005, help="for the calibrated point: accuracy drop vs the final exit")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    train_all = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    train_pool, calibration = train_all.split(5000 / len(train_all), seed=0)
    if args.test_samples:
        test = test.subset(slice(0, args.test_samples))
    thresholds = [float(t) for t in args.thresholds.split(",")]
    results = {}
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
        recipe = MODELS[name]
        train = train_pool.subset(slice(0, recipe.train_samples))
        static, nets = train_model(recipe, train, args.out / name, args.variants.split(","))
        if not args.train_only:
            results[name] = measure_model(name, static, nets, train, calibration, test, thresholds, args)
    if not args.train_only:
        report = {
            "dataset": args.data, "test_samples": len(test), "backend": "onnxruntime CPU",
            "threads": online_cores(), "thresholds": thresholds, "models": results,
        }
        write_json_atomic(args.out / "bench.json", report)
        plot_bench(report, args.out / "bench.png")
        print_summary(report)
        print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


def train_model(recipe: ModelRecipe, train: Dataset, out: Path, variants: list[str]) -> tuple[BlockBackbone, dict[str, MultiExitNetwork]]:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        raise SystemExit(f"unknown exit variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.arch, train, **recipe.kwargs)
    static = pipeline.static_model(spec, train, cfg, out / "static.pt")
    exit_cfg = {
        "frozen": dataclasses.replace(cfg, epochs=recipe.exit_epochs),
        "joint": dataclasses.replace(cfg, epochs=recipe.exit_epochs, lr=recipe.joint_lr),
    }
    nets = {}
    for variant in variants:
        exits = VARIANTS[variant]
        exit_spec = pipeline.backbone_spec(recipe.arch, train, **recipe.kwargs)
        exit_spec.split_points = list(SPLITS)
        exit_spec.head = exits.head.to_dict() if exits.head != HeadSpec() else {}
        nets[variant] = pipeline.multi_exit_model(
            exit_spec, exits.mode, train, exit_cfg[exits.mode], out / f"{variant}.pt", static=static, distill=exits.distill,
        )
    return static, nets


def measure_model(
    name: str, static: BlockBackbone, nets: dict[str, MultiExitNetwork], train: Dataset,
    calibration: Dataset, test: Dataset, thresholds: list[float], args: argparse.Namespace,
) -> dict[str, Any]:
    variants = []
    for mode, net in nets.items():
        manifest = pipeline.build(net, train, args.out / name / mode / "engines", f"{name}-{mode}", static=static)
        runtime = Runtime(manifest)
        picked, _ = pipeline.pick_threshold(net, calibration, segment_latencies(runtime, calibration), args.max_drop)
        variants.append(Variant(mode, net, runtime, picked))
    manifest = variants[0].runtime.manifest
    static_model = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    configs: dict[str, Config] = {"static": static_model.config()}
    for v in variants:
        configs |= {f"{v.mode}/{label}": runtime_config(v.runtime, t) for label, t in variant_points(v, thresholds).items()}
    log.info("%s: %d configurations x %d test images, interleaved", name, len(configs), len(test))
    measured = measure_interleaved(configs, test)
    result: dict[str, Any] = {
        "static": measured["static"].to_dict() | {"throughput_b64": measure_throughput(static_model.predict, test)},
        "variants": {v.mode: variant_report(v, measured, thresholds, test) for v in variants},
    }
    return result


def variant_points(v: Variant, thresholds: list[float]) -> dict[str, list[float | None]]:
    early = v.runtime.num_exits - 1
    # "full": exits switched off (segments run as trunks); "evaluated": exits computed, none taken.
    points: dict[str, list[float | None]] = {"full": [None] * early, "evaluated": [NONE_PASS] * early}
    points |= {f"H<={t}": [t] * early for t in thresholds}
    if v.calibrated is not None:
        points["calibrated"] = [v.calibrated] * early
    return points


def variant_report(v: Variant, measured: dict[str, Measurement], thresholds: list[float], test: Dataset) -> dict[str, Any]:
    # Every segment ran, exit included, for every image: the cost a threshold point pays per segment.
    segment_ms = measured[f"{v.mode}/evaluated"].segment_ms or []

    def point(label: str, t: list[float | None], costs: list[float] = segment_ms) -> dict[str, Any]:
        m = measured[f"{v.mode}/{label}"]
        return m.to_dict() | {
            "threshold": t[0],
            "predicted_mean_ms": predicted_latency(m.reach_fractions, costs),
            "throughput_b64": measure_throughput(lambda x: v.runtime.infer(x, t), test),
        }

    points = variant_points(v, thresholds)
    table = exit_table(v.net, test)
    return {
        "segment_ms": segment_ms,
        "full_depth": point("full", points["full"], measured[f"{v.mode}/full"].segment_ms or []),
        "exits_evaluated": point("evaluated", points["evaluated"]),
        "sweep": [point(f"H<={t}", points[f"H<={t}"]) for t in thresholds],
        "calibrated": point("calibrated", points["calibrated"]) if "calibrated" in points else None,
        "oracle_mean_ms": predicted_latency(oracle_reach(table), segment_ms),
        "exit_accuracy": [float((p == table.labels).mean()) for p in table.predictions],
    }


def print_summary(report: dict[str, Any]) -> None:
    for name, model in report["models"].items():
        static = model["static"]
        print(f"\n== {name}: static {static['accuracy']:.2%} {static['mean_ms']:.3f} ms/img (batch 1), {static['throughput_b64']:.0f} img/s (batch 64)")
        for mode, v in model["variants"].items():
            rows = [("full depth, exits off", v["full_depth"]), ("exits computed, none taken", v["exits_evaluated"])] + [(f"H<={p['threshold']}", p) for p in v["sweep"]]
            if v["calibrated"]:
                rows.append((f"calibrated H<={v['calibrated']['threshold']}", v["calibrated"]))
            segments = ", ".join(f"{ms:.3f}" for ms in v["segment_ms"])
            print(f"  {mode} exits: per-exit accuracy {', '.join(f'{a:.1%}' for a in v['exit_accuracy'])}; segments {segments} ms; oracle {v['oracle_mean_ms']:.3f} ms")
            for label, p in rows:
                print(
                    f"    {label:>28} acc {p['accuracy']:.2%}  mean {p['mean_ms']:.3f} ms ({p['mean_ms'] / static['mean_ms']:.2f}x)"
                    f"  predicted {p['predicted_mean_ms']:.3f} ({p['mean_ms'] / p['predicted_mean_ms'] - 1:+.1%})"
                    f"  p50 {p['p50_ms']:.3f}  p99 {p['p99_ms']:.3f}  b64 {p['throughput_b64']:.0f}/s"
                    f"  exits {', '.join(f'{f:.0%}' for f in p['exit_fractions'])}"
                )


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
