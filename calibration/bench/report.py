"""The benchmark's report: each set's point and full depth against the static model, the
oracle of its exits, the acceptance figures per model, and the console summary."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from calibration.bench.models import FIXED_EXITS, ModelData
from calibration.evaluate import Measurement
from calibration.exits import exit_table, oracle_reach, predicted_latency
from calibration.latency import LatencyModel
from calibration.placement import Placement

if TYPE_CHECKING:
    from calibration.bench.measure import ExitSet, Int8Chain


def plan_dict(p: Placement) -> dict[str, Any]:
    return {"exits": p.chosen, "thresholds": p.plan.thresholds, "calibration_accuracy": p.plan.accuracy,
            "predicted_ms": p.plan.predicted_ms, "feasible": p.plan.feasible, "exit_fractions": p.plan.exit_fractions}

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
    best = best_within(fp32, static["accuracy"], r["max_drop"])
    int8_label = next(k for k in r["sets"] if k.startswith("int8-"))
    int8_point = r["sets"][int8_label]["point"]
    int8 = {int8_label: (int8_point["accuracy"], int8_point["ratio"]), "static-int8": (r["static_int8"]["accuracy"], 1.0)}
    best8 = best_within(int8, static["accuracy"], r["max_drop"])
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

def best_within(points: dict[str, tuple[float, float]], static_accuracy: float, max_drop: float) -> str:
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
