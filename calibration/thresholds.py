"""Choose per-exit thresholds on the calibration split for a target.

A target is either an accuracy drop of at most `max_drop` (a fraction) against a
reference accuracy (the final exit's on the same split by default), at the lowest
predicted latency; or a mean-latency budget in ms on this device, at the highest
accuracy. Each exit's candidates are quantiles of its own scores, plus None (exit
off, which also makes the segment cheaper: it runs as a trunk).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from calibration.exits import ExitTable, outcome
from calibration.latency import LatencyModel

EXHAUSTIVE_LIMIT = 20_000  # threshold combinations tried one by one; beyond, coordinate descent


@dataclass(frozen=True)
class Plan:
    thresholds: list[float | None]
    criterion: str
    accuracy: float  # on the split it was chosen on
    predicted_ms: float
    exit_fractions: list[float]
    feasible: bool  # False: nothing met the target; this is the closest found
    precision: str = "fp32"


@dataclass(frozen=True)
class Target:
    max_drop: float | None = None  # fraction, e.g. 0.005 for half a point
    budget_ms: float | None = None
    reference_accuracy: float | None = None  # default: the final exit's on the table

    def __post_init__(self) -> None:
        if (self.max_drop is None) == (self.budget_ms is None):
            raise ValueError("a target is either max_drop or budget_ms, exactly one")


def candidates(scores: np.ndarray, count: int = 40) -> list[float | None]:
    """None plus thresholds between the distinct quantiles of one exit's scores."""
    qs = np.unique(np.quantile(scores.astype(np.float64), np.linspace(0.0, 1.0, count + 1)[1:]))
    return [None, *(float(q) for q in qs)]


def search_thresholds(
    table: ExitTable, criterion: str, model: LatencyModel, target: Target, count: int = 40, precision: str = "fp32",
) -> Plan:
    reference = target.reference_accuracy
    if reference is None:
        reference = float((table.predictions[-1] == table.labels).mean())
    early = table.num_exits - 1
    options = [candidates(table.score(criterion)[k], count) for k in range(early)]

    def evaluate(thresholds: list[float | None]) -> tuple[tuple[float, float, float], Plan]:
        result = outcome(table, thresholds, criterion)
        ms = model.predict(result.reach_fractions, thresholds)
        if target.budget_ms is not None:
            key = (max(0.0, ms - target.budget_ms), -result.accuracy, ms)
        else:
            key = (max(0.0, reference - target.max_drop - result.accuracy), ms, -result.accuracy)  # type: ignore[operator]
        return key, Plan(list(thresholds), criterion, result.accuracy, ms, result.exit_fractions, key[0] == 0.0, precision)

    if int(np.prod([len(o) for o in options])) <= EXHAUSTIVE_LIMIT:
        return min((evaluate(list(c)) for c in itertools.product(*options)), key=lambda kp: kp[0])[1]
    return _coordinate_descent(options, evaluate)


Evaluation = Callable[[list[float | None]], tuple[tuple[float, float, float], Plan]]


def _coordinate_descent(options: Sequence[list[float | None]], evaluate: Evaluation) -> Plan:
    """From every exit off, change one exit's threshold at a time while the key improves."""
    current: list[float | None] = [None] * len(options)
    best_key, best = evaluate(current)
    for _ in range(4):
        improved = False
        for k, choices in enumerate(options):
            for c in choices:
                trial = current[:k] + [c] + current[k + 1 :]
                key, plan = evaluate(trial)
                if key < best_key:
                    best_key, best, current, improved = key, plan, trial, True
        if not improved:
            break
    return best
