"""Benchmark: static model vs the segment chain (full depth and entropy exits) on
onnxruntime, for a ResNet-20-class and a larger model, frozen and jointly trained exits.

    edge-bench --train-only     # train (checkpoints cached under --out)
    edge-bench                  # build, measure, write bench.json and bench.png
"""

from __future__ import annotations

import argparse
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.evaluate import StaticModel, measure_runtime, measure_throughput, segment_latencies
from calibration.exits import exit_table, oracle_reach, predicted_latency
from calibration.train import TrainConfig, set_threads
from edge.atomic import write_json_atomic
from edge.runtime import Runtime
from engines.backbone import BlockBackbone
from tools._cli import run_main
from tools.bench_plot import plot_bench

log = logging.getLogger("tools.bench")


@dataclass(frozen=True)
class ModelRecipe:
    arch: str
    kwargs: dict[str, Any]
    train_samples: int
    epochs: int


MODELS = {
    "resnet20": ModelRecipe("resnet20", {}, 30000, 2),
    "resnet14-wide": ModelRecipe("resnet14", {"widths": [32, 64, 128]}, 20000, 2),
}
SPLITS = ["layer1", "layer2"]
THRESHOLDS = [0.02, 0.05, 0.1, 0.2, 0.35, 0.5, 0.8]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/bench"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {', '.join(MODELS)}")
    p.add_argument("--train-only", action="store_true", help="train and checkpoint, measure nothing")
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--thresholds", default=",".join(map(str, THRESHOLDS)))
    p.add_argument("--max-drop", type=float, default=0.005)
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
        recipe = MODELS[name]
        train = train_pool.subset(slice(0, recipe.train_samples))
        static, nets = train_model(name, recipe, train, args.out / name)
        if not args.train_only:
            results[name] = measure_model(name, static, nets, train, calibration, test, thresholds, args)
    if not args.train_only:
        report = {"dataset": args.data, "test_samples": len(test), "backend": "onnxruntime CPU", "models": results}
        write_json_atomic(args.out / "bench.json", report)
        plot_bench(report, args.out / "bench.png")
        print_summary(report)
        print(f"wrote {args.out / 'bench.json'} and {args.out / 'bench.png'}")
    return 0


def train_model(name: str, recipe: ModelRecipe, train: Dataset, out: Path) -> tuple[BlockBackbone, dict[str, Any]]:
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.arch, train, **recipe.kwargs)
    static = pipeline.static_model(spec, train, cfg, out / "static.pt")
    exit_spec = pipeline.backbone_spec(recipe.arch, train, **recipe.kwargs)
    exit_spec.split_points = list(SPLITS)
    nets = {mode: pipeline.multi_exit_model(exit_spec, mode, train, cfg, out / f"{mode}.pt", static=static) for mode in pipeline.EXIT_MODES}
    return static, nets


def measure_model(name: str, static: BlockBackbone, nets: dict[str, Any], train: Dataset, calibration: Dataset, test: Dataset, thresholds: list[float], args: argparse.Namespace) -> dict[str, Any]:
    out = args.out / name
    result: dict[str, Any] = {"variants": {}}
    for mode, net in nets.items():
        manifest = pipeline.build(net, train, out / mode / "engines", f"{name}-{mode}", static=static)
        runtime = Runtime(manifest)
        if "static" not in result:
            model = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
            result["static"] = model.measure(test).to_dict() | {"throughput_b64": model.throughput(test)}
            log.info("%s static: %s", name, result["static"])
        result["variants"][mode] = measure_variant(runtime, net, calibration, test, thresholds, args.max_drop)
    return result


def measure_variant(runtime: Runtime, net: Any, calibration: Dataset, test: Dataset, thresholds: list[float], max_drop: float) -> dict[str, Any]:
    segment_ms = segment_latencies(runtime, calibration)
    never = [None] * (runtime.num_exits - 1)
    full = runtime_point(runtime, test, never, segment_ms)
    sweep = [runtime_point(runtime, test, [t] * (runtime.num_exits - 1), segment_ms) | {"threshold": t} for t in thresholds]
    picked, _ = pipeline.pick_threshold(net, calibration, segment_ms, max_drop)
    calibrated = None
    if picked is not None:
        calibrated = runtime_point(runtime, test, [picked] * (runtime.num_exits - 1), segment_ms) | {"threshold": picked}
    table = exit_table(net, test)
    return {
        "segment_ms": segment_ms,
        "full_depth": full,
        "sweep": sweep,
        "calibrated": calibrated,
        "oracle_mean_ms": predicted_latency(oracle_reach(table), segment_ms),
        "exit_accuracy": [float((p == table.labels).mean()) for p in table.predictions],
    }


def runtime_point(runtime: Runtime, test: Dataset, thresholds: list[float | None], segment_ms: list[float]) -> dict[str, Any]:
    measured = measure_runtime(runtime, test, thresholds)
    reach = [1.0 - sum(measured.exit_fractions[:k]) for k in range(runtime.num_exits)]
    return measured.to_dict() | {
        "predicted_mean_ms": predicted_latency(reach, segment_ms),
        "throughput_b64": measure_throughput(runtime, test, 64, thresholds),
    }


def print_summary(report: dict[str, Any]) -> None:
    for name, model in report["models"].items():
        static = model["static"]
        print(f"\n== {name}: static {static['accuracy']:.2%} {static['mean_ms']:.3f} ms/img (batch 1), {static['throughput_b64']:.0f} img/s (batch 64)")
        for mode, v in model["variants"].items():
            rows = [("full depth", v["full_depth"])] + [(f"H<={p['threshold']}", p) for p in v["sweep"]]
            if v["calibrated"]:
                rows.append((f"calibrated H<={v['calibrated']['threshold']}", v["calibrated"]))
            print(f"  {mode} exits (per-exit accuracy {', '.join(f'{a:.1%}' for a in v['exit_accuracy'])}; oracle {v['oracle_mean_ms']:.3f} ms)")
            for label, p in rows:
                print(
                    f"    {label:>24} acc {p['accuracy']:.2%}  mean {p['mean_ms']:.3f} ms ({p['mean_ms'] / static['mean_ms']:.2f}x)"
                    f"  pred {p['predicted_mean_ms']:.3f}  p50 {p['p50_ms']:.3f}  p99 {p['p99_ms']:.3f}"
                    f"  b64 {p['throughput_b64']:.0f}/s  exits {', '.join(f'{f:.0%}' for f in p['exit_fractions'])}"
                )


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
