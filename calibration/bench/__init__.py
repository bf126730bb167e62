"""The benchmark: early exits on converged models against their static model, onnxruntime
on the CPU, batch 1 (`edge-bench`). Exits are placed by measurement (from a candidate
exit after every block, the set with the lowest predicted mean latency at the accuracy
target), trained on the frozen backbone (distilled from the final exit), and compared
with the fixed `layer1,layer2` set; fp32 and INT8 (against the static model quantized
the same way). `models` trains, `measure` measures, `report` sums up, `rules` compares
exit decision rules on the placed exits.
"""

from __future__ import annotations

from typing import Any

from calibration.bench.config import BenchConfig
from calibration.bench.measure import depth_and_exits, measure_model
from calibration.bench.models import MODELS, model_data, train_adaptive, train_model
from calibration.bench.report import print_summary, summary_entry
from calibration.bench.rules import compare_rules
from calibration.data import load_dataset
from calibration.plots.bench import plot_bench, plot_depth_frontiers
from calibration.train import set_threads
from edge.atomic import write_json_atomic
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError

__all__ = ["BenchConfig", "MODELS", "run_bench"]


def run_bench(config: BenchConfig) -> dict[str, Any] | None:
    """Train what is not cached; unless `train_only`, measure and write the results (or,
    with `rules`, compare the decision rules on the last run's exits). Returns the report."""
    set_threads()
    unknown = [n for n in config.models if n not in MODELS]
    if unknown:
        raise UserError(f"unknown model(s) {unknown}; choose from {', '.join(MODELS)}")
    train_all = load_dataset(config.data, "train")
    test = load_dataset(config.data, "test")
    # the 5000 images the quickstart and edge-calibrate hold out too (a fifth of a small dataset)
    train_pool, calibration = train_all.split(min(5000, len(train_all) // 5) / len(train_all), seed=0)
    if config.rules:
        return compare_rules(config, train_pool, calibration, test)
    results: dict[str, Any] = {}
    for name in config.models:
        recipe = MODELS[name]
        data = model_data(recipe, train_pool, calibration, test)
        static, nets = train_model(recipe, data, config.out / name)
        adaptive = train_adaptive(recipe, data, config.out / name) if recipe.adaptive_lr and config.depth_frontier else None
        if not config.train_only:
            results[name] = measure_model(name, data, static, nets, config)
            if adaptive is not None:
                results[name]["depth_and_exits"] = depth_and_exits(name, data, static, adaptive, config)
    if config.train_only:
        return None
    report = {"dataset": config.data, "backend": "onnxruntime CPU", "threads": online_cores(), "max_drop_pt": config.max_drop,
              "criterion": config.criterion, "models": results}
    write_json_atomic(config.results / "bench.json", report)
    write_json_atomic(config.results / "bench-summary.json", [summary_entry(name, r) for name, r in results.items()])
    plot_bench(report, config.results / "bench.png")
    depth = plot_depth_frontiers(report, config.results / "bench-depth.png")
    print_summary(report)
    print(f"wrote bench.json, bench.png{', bench-depth.png' if depth else ''} and bench-summary.json to {config.results}")
    return report
