"""Threshold search and the latency model, on tables with known structure."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from calibration import thresholds as search
from calibration.exits import ExitTable, outcome
from calibration.latency import LatencyModel
from calibration.thresholds import Target, candidates, search_thresholds

MODEL = LatencyModel(segment_ms=[0.3, 0.3, 0.4], trunk_ms=[0.25, 0.26], overhead_ms=0.05)


def table(seed: int = 0, n: int = 3000, exits: int = 3, classes: int = 5) -> ExitTable:
    """Later exits are right more often; each exit's score is lower where it is right."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    right = np.stack([rng.random(n) < 0.6 + 0.15 * k for k in range(exits)])
    predictions = np.where(right, labels, (labels + 1) % classes)
    scores = np.where(right, rng.random((exits, n)) * 0.8, 0.3 + rng.random((exits, n)))
    return ExitTable(predictions, scores, labels, {"maxprob": scores / 2.0})


def test_latency_model_charges_trunks_where_exits_are_off() -> None:
    assert MODEL.predict([1.0, 1.0, 1.0], [None, None]) == pytest.approx(0.05 + 0.25 + 0.26 + 0.4)
    assert MODEL.predict([1.0, 0.5, 0.2], [0.1, 0.1]) == pytest.approx(0.05 + 0.3 + 0.15 + 0.08)
    assert MODEL.predict([1.0, 0.5, 0.5], [None, 0.1]) == pytest.approx(0.05 + 0.25 + 0.15 + 0.2)
    assert LatencyModel.from_dict(MODEL.to_dict()) == MODEL


def brute_force_best(t: ExitTable, criterion: str, floor: float) -> float:
    """Lowest predicted latency over every candidate combination meeting the floor."""
    best = np.inf
    options = [candidates(t.score(criterion)[k]) for k in range(t.num_exits - 1)]
    for combo in itertools.product(*options):
        result = outcome(t, list(combo), criterion)
        if result.accuracy >= floor:
            best = min(best, MODEL.predict(result.reach_fractions, list(combo)))
    return best


@pytest.mark.parametrize("criterion", ["entropy", "maxprob"])
@pytest.mark.parametrize("drop", [0.0, 0.02, 0.1])
def test_accuracy_target_is_met_at_the_lowest_predicted_latency(criterion: str, drop: float) -> None:
    t = table()
    final = float((t.predictions[-1] == t.labels).mean())
    plan = search_thresholds(t, criterion, MODEL, Target(max_drop=drop))
    result = outcome(t, plan.thresholds, criterion)
    assert plan.feasible and result.accuracy >= final - drop - 1e-12
    assert plan.accuracy == pytest.approx(result.accuracy)
    assert plan.predicted_ms == pytest.approx(MODEL.predict(result.reach_fractions, plan.thresholds))
    assert plan.predicted_ms == pytest.approx(brute_force_best(t, criterion, final - drop))
    if drop >= 0.02:
        assert plan.predicted_ms < MODEL.predict([1, 1, 1], [None, None])  # exits really pay


def test_budget_target_is_met_with_the_best_accuracy_or_reported_infeasible() -> None:
    t = table(1)
    plan = search_thresholds(t, "entropy", MODEL, Target(budget_ms=0.7))
    assert plan.feasible and plan.predicted_ms <= 0.7
    looser = search_thresholds(t, "entropy", MODEL, Target(budget_ms=0.9))
    assert looser.accuracy >= plan.accuracy
    impossible = search_thresholds(t, "entropy", MODEL, Target(budget_ms=0.2))
    assert not impossible.feasible and impossible.predicted_ms > 0.2


def test_coordinate_descent_meets_the_target_on_many_exits(monkeypatch: pytest.MonkeyPatch) -> None:
    t = table(2, exits=5)
    model = LatencyModel([0.2] * 5, [0.18] * 4, 0.05)
    monkeypatch.setattr(search, "EXHAUSTIVE_LIMIT", 0)
    plan = search_thresholds(t, "entropy", model, Target(max_drop=0.03))
    final = float((t.predictions[-1] == t.labels).mean())
    assert plan.feasible and outcome(t, plan.thresholds).accuracy >= final - 0.03
    assert plan.predicted_ms < model.predict([1.0] * 5, [None] * 4)


def test_a_target_is_one_thing() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        Target()
    with pytest.raises(ValueError, match="exactly one"):
        Target(max_drop=0.01, budget_ms=1.0)
