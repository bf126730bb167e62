"""`edge-bench --rules`: the exit decision rules of `calibration.rules` compared on each
model's placed exits, with the costs `edge-bench` measured (read from its bench.json),
thresholds chosen on the calibration split and judged on the test split. Writes
bench-rules.json next to bench.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

from calibration.bench.config import BenchConfig
from calibration.bench.models import FIXED_MEASURED, MODELS, model_data, train_model
from calibration.data import Dataset
from calibration.exits import exit_logits
from calibration.placement import CandidateCosts
from calibration.rules import compare_rules as rules_on
from edge.atomic import write_json_atomic
from edge.errors import UserError
from engines.partition import MultiExitNetwork


def compare_rules(config: BenchConfig, pool: Dataset, calibration: Dataset, test: Dataset) -> dict[str, Any]:
    bench = read_bench(config.results)
    target = (config.max_drop - config.margin) / 100
    report: dict[str, Any] = {"target_pt": 100 * target, "predicted": "from the costs in bench.json", "models": {}}
    for name in config.models:
        if name not in bench["models"]:
            raise UserError(f"{name} is not in {config.results / 'bench.json'}; run edge-bench --models {name} first")
        data = model_data(MODELS[name], pool, calibration, test)
        _, nets = train_model(MODELS[name], data, config.out / name)
        report["models"][name] = model_rules(bench["models"][name], FIXED_MEASURED, nets[FIXED_MEASURED], data.calibration, data.test, target)
    write_rules(config.results, report)
    return report


def model_rules(bench: dict[str, Any], recipe: str, net: MultiExitNetwork, calibration: Dataset, test: Dataset, max_drop: float) -> dict[str, Any]:
    """One model's rules on the set `edge-bench` placed for `recipe`'s exits."""
    placement = bench["placements"][recipe]
    chosen = [placement["candidates"].index(n) for n in placement["chosen"]]
    results = rules_on((exit_logits(net, calibration), calibration.labels), (exit_logits(net, test), test.labels),
                       CandidateCosts(**placement["costs"]), chosen, max_drop)
    return {"recipe": recipe, "exits": placement["chosen"], "rules": [dataclasses.asdict(r) for r in results]}


def read_bench(results: Path) -> dict[str, Any]:
    path = results / "bench.json"
    if not path.exists():
        raise UserError(f"{path} not found: the rules are compared on the costs edge-bench measured; run edge-bench first")
    report: dict[str, Any] = json.loads(path.read_text())
    return report


def write_rules(results: Path, report: dict[str, Any]) -> None:
    write_json_atomic(results / "bench-rules.json", report)
    for name, m in report["models"].items():
        print(f"\n== {name}: exits at {', '.join(m['exits'])} ({m['recipe']}); thresholds for -{report['target_pt']:.2f} pt on calibration")
        for r in m["rules"]:
            print(f"  {r['rule']:>18}: {r['predicted_ratio']:.3f}x, {r['vs_oracle']:.2f}x its oracle;"
                  f" -{r['calibration_drop_pt']:.2f} pt on calibration, -{r['test_drop_pt']:.2f} pt on test;"
                  f" exits {', '.join(f'{f:.0%}' for f in r['exit_fractions'])}")
    print(f"wrote bench-rules.json to {results}")
