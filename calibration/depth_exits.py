"""Depth and exits on one frontier: an adaptive-depth network (seed 003) with exit heads,
every depth configuration at the exit thresholds that meet an accuracy target.

Per depth configuration the chain's costs are measured once through the runtime (every
exit computed, and every exit off as trunks), interleaved with the static model; the
exits' outputs on the calibration split at that depth give per-exit thresholds with the
lowest predicted latency at the target (`search_thresholds`). Each depth then becomes
two operating points, its thresholds and its exits off, to be measured on the test split;
the frontier is the Pareto set of what was measured.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from calibration.data import Dataset
from calibration.evaluate import Config, Measurement, measure_interleaved, runtime_config
from calibration.exits import exit_table, outcome
from calibration.latency import NONE_PASS, LatencyModel
from calibration.thresholds import Target, search_thresholds
from edge.frontier import pareto_front
from edge.manifest import SKIP, OperatingPoint
from edge.runtime import Runtime
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class DepthPoint:
    """One depth configuration at one set of exit thresholds, as chosen on calibration."""

    name: str
    depth: str
    thresholds: list[float | None]
    calibration_accuracy: float
    predicted_ratio: float  # predicted mean latency over the static model's, both from the costs run

    def operating_point(self, criterion: str) -> OperatingPoint:
        return OperatingPoint(self.name, list(self.thresholds), criterion, "fp32", self.depth)


def depth_costs(runtime: Runtime, depths: Sequence[str], static: Config, data: Dataset, block: int = 50) -> tuple[dict[str, LatencyModel], float]:
    """Each depth's latency model, and the static model's mean in the same run (ms). At
    full depth with every exit off the whole engine runs, where the manifest has one."""
    early = runtime.num_exits - 1
    configs = {"static": static}
    for depth in depths:
        configs[f"{depth}/evaluated"] = runtime_config(runtime, [NONE_PASS] * early, depth=depth)
        configs[f"{depth}/trunks"] = runtime_config(runtime, [None] * early, depth=depth, whole=False)
    if runtime.has_whole:
        configs["whole"] = runtime_config(runtime, [None] * early)
    m = measure_interleaved(configs, data, progress=False, block=block)
    models = {}
    for depth in depths:
        trunks = m[f"{depth}/trunks"]
        trunk_ms = trunks.segment_ms or []
        whole = m["whole"].mean_ms if "whole" in m and SKIP not in depth else None
        models[depth] = LatencyModel(m[f"{depth}/evaluated"].segment_ms or [], trunk_ms[:-1], trunks.mean_ms - sum(trunk_ms), whole)
    return models, m["static"].mean_ms


def plan_depths(
    net: MultiExitNetwork, models: dict[str, LatencyModel], static_ms: float, data: Dataset, target: Target, criterion: str,
) -> list[DepthPoint]:
    """Per depth: the thresholds that meet `target` fastest (predicted), and exits off."""
    backbone = net.backbone
    restore = backbone.depth
    early = net.num_exits - 1
    points = []
    try:
        for depth, model in models.items():
            backbone.set_depth(depth)  # type: ignore[operator]
            table = exit_table(net, data)
            off = outcome(table, [None] * early, criterion)
            points.append(DepthPoint(f"{depth}-off", depth, [None] * early, off.accuracy, model.predict(off.reach_fractions, [None] * early) / static_ms))
            plan = search_thresholds(table, criterion, model, target, 24)
            if plan.feasible and any(t is not None for t in plan.thresholds):
                points.append(DepthPoint(f"{depth}-exits", depth, plan.thresholds, plan.accuracy, plan.predicted_ms / static_ms))
    finally:
        backbone.set_depth(restore)  # type: ignore[operator]
    return points


def frontier(measured: dict[str, Measurement]) -> list[str]:
    """Names of the points no other point beats on both mean latency and accuracy."""
    return [name for name, _ in pareto_front(list(measured.items()), lambda p: p[1].mean_ms, lambda p: p[1].accuracy)]


def point_entries(points: Sequence[DepthPoint], measured: dict[str, Measurement], static: Measurement) -> list[dict[str, Any]]:
    """Each point as measured, beside what was chosen and predicted for it."""
    return [
        {"name": p.name, "depth": p.depth, "thresholds": p.thresholds, "calibration_accuracy": p.calibration_accuracy,
         "predicted_ratio": p.predicted_ratio, "ratio": measured[p.name].mean_ms / static.mean_ms,
         "accuracy_drop_pt": 100 * (static.accuracy - measured[p.name].accuracy)} | measured[p.name].to_dict()
        for p in points
    ]
