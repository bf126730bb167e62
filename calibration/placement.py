"""Place exits by measurement: from a candidate exit after every block, choose the set
with the lowest predicted mean latency at the accuracy target.

The costs are measured once, on the chain cut at every candidate: each piece as a trunk
(exit off), each exit head, and what one more segment boundary costs (a call and the
layout change around it). A chain cut at any subset of the candidates is then predicted
from those pieces, and its thresholds chosen on the calibration split as
`calibration.thresholds` does for a built chain. The search adds the exit that lowers
the predicted latency most while any does, then drops any exit whose removal lowers it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from calibration.exits import ExitTable
from calibration.latency import LatencyModel
from calibration.thresholds import Plan, Target, search_thresholds


@dataclass(frozen=True)
class CandidateCosts:
    """Batch-1 costs (ms) of the chain cut at every candidate exit."""

    trunk_ms: list[float]  # piece k as a trunk; the last piece ends in the final classifier
    head_ms: list[float]  # exit k's head, one per candidate
    boundary_ms: float  # one more segment boundary
    overhead_ms: float  # one call, outside the segments

    def __post_init__(self) -> None:
        if len(self.head_ms) != len(self.trunk_ms) - 1:
            raise ValueError(f"{len(self.trunk_ms)} pieces need {len(self.trunk_ms) - 1} exit heads, got {len(self.head_ms)}")

    @property
    def num_candidates(self) -> int:
        return len(self.head_ms)

    def latency_model(self, chosen: Sequence[int]) -> LatencyModel:
        """The latency model of the chain cut at the `chosen` candidates (increasing)."""
        ends = [*chosen, self.num_candidates]
        segments, trunks, start = [], [], 0
        for j, end in enumerate(ends):
            # pieces merged into one segment lose the boundaries between them
            trunk = sum(self.trunk_ms[start : end + 1]) - (end - start) * self.boundary_ms
            trunks.append(trunk)
            segments.append(trunk + (self.head_ms[end] if j < len(chosen) else 0.0))
            start = end + 1
        return LatencyModel(segments, trunks[:-1], self.overhead_ms)

    def static_ms(self) -> float:
        """The uncut network: every piece, no boundary between them."""
        return self.latency_model([]).predict([1.0], [])


@dataclass(frozen=True)
class Placement:
    chosen: list[int]  # candidate indices
    plan: Plan  # thresholds for the chosen exits, with their predicted latency and accuracy
    model: LatencyModel


def sub_table(table: ExitTable, chosen: Sequence[int]) -> ExitTable:
    """The table of a chain with only the `chosen` early exits (and the final one)."""
    rows = [*chosen, table.num_exits - 1]
    return ExitTable(table.predictions[rows], table.entropies[rows], table.labels, {k: v[rows] for k, v in table.scores.items()})


def evaluate_set(table: ExitTable, costs: CandidateCosts, chosen: Sequence[int], target: Target, criterion: str, count: int) -> Placement:
    model = costs.latency_model(chosen)
    return Placement(list(chosen), search_thresholds(sub_table(table, chosen), criterion, model, target, count), model)


def place_exits(
    table: ExitTable, costs: CandidateCosts, target: Target, criterion: str = "entropy", count: int = 24,
) -> Placement:
    """The exit set (a subset of the candidates, maybe empty) with the lowest predicted
    mean latency that meets `target` on `table` (the calibration split's outputs at every
    candidate and the final exit)."""
    if table.num_exits != costs.num_candidates + 1:
        raise ValueError(f"the table has {table.num_exits - 1} early exits, the costs {costs.num_candidates} candidates")

    def key(p: Placement) -> tuple[bool, float]:
        return (not p.plan.feasible, p.plan.predicted_ms)

    best = evaluate_set(table, costs, [], target, criterion, count)
    improved = True
    while improved:
        improved = False
        moves = [sorted({*best.chosen, c}) for c in range(costs.num_candidates) if c not in best.chosen]
        moves += [[c for c in best.chosen if c != drop] for drop in best.chosen]
        for chosen in moves:
            trial = evaluate_set(table, costs, chosen, target, criterion, count)
            if key(trial) < key(best):
                best, improved = trial, True
    return best


def candidate_costs(segment_ms: Sequence[float], trunk_ms: Sequence[float], overhead_ms: float, static_ms: float) -> CandidateCosts:
    """Costs from a profile of the chain cut at every candidate (`segment_ms` with each
    exit computed, `trunk_ms` with it off; the final segment's in both) and the uncut
    network's measured latency: the boundary cost is what the cut chain adds to it,
    shared by its boundaries."""
    pieces = [*trunk_ms, segment_ms[-1]]
    heads = [max(0.0, s - t) for s, t in zip(segment_ms[:-1], trunk_ms)]
    boundaries = len(pieces) - 1
    boundary = max(0.0, (float(np.sum(pieces)) + overhead_ms - static_ms) / boundaries) if boundaries else 0.0
    return CandidateCosts(list(map(float, pieces)), heads, boundary, overhead_ms)
