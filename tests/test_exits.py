"""Threshold planning on per-exit tables: checked against a brute-force loop."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.exits import ExitTable, choose_uniform_threshold, exits_taken, oracle_reach, outcome, predicted_latency


def random_table(seed: int, exits: int = 3, n: int = 400, classes: int = 5) -> ExitTable:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    # later exits are right more often and more confident
    predictions = np.stack([np.where(rng.random(n) < 0.5 + 0.2 * k, labels, rng.integers(0, classes, n)) for k in range(exits)])
    entropies = rng.random((exits, n)) * (1.5 - 0.4 * np.arange(exits))[:, None]
    return ExitTable(predictions, entropies.astype(np.float32), labels)


def brute_force_exits(table: ExitTable, thresholds: list[float | None]) -> np.ndarray:
    taken = []
    for i in range(table.predictions.shape[1]):
        k = next((k for k, t in enumerate(thresholds) if t is not None and table.entropies[k, i] <= t), table.num_exits - 1)
        taken.append(k)
    return np.array(taken)


@pytest.mark.parametrize("thresholds", [[None, None], [0.3, None], [None, 0.5], [0.2, 0.6], [10.0, 10.0]])
def test_exits_taken_matches_a_per_sample_loop(thresholds: list[float | None]) -> None:
    table = random_table(1)
    np.testing.assert_array_equal(exits_taken(table, thresholds), brute_force_exits(table, thresholds))


def test_outcome_accuracy_and_fractions() -> None:
    table = random_table(2)
    taken = brute_force_exits(table, [0.4, 0.4])
    result = outcome(table, [0.4, 0.4])
    chosen = np.array([table.predictions[k, i] for i, k in enumerate(taken)])
    assert result.accuracy == pytest.approx((chosen == table.labels).mean())
    assert sum(result.exit_fractions) == pytest.approx(1.0)
    assert result.reach_fractions[0] == 1.0
    assert result.reach_fractions[2] == pytest.approx((taken == 2).mean())


def test_never_exiting_runs_every_segment() -> None:
    result = outcome(random_table(3), [None, None])
    assert result.reach_fractions == [1.0, 1.0, 1.0]
    assert result.exit_fractions == [0.0, 0.0, 1.0]


def test_oracle_leaves_at_first_exit_agreeing_with_final() -> None:
    table = ExitTable(
        predictions=np.array([[1, 0, 2, 3], [1, 1, 0, 3], [1, 1, 1, 3]]),
        entropies=np.zeros((3, 4), dtype=np.float32),
        labels=np.array([1, 1, 1, 3]),
    )
    # sample 0 and 3 agree at exit 0, sample 1 at exit 1, sample 2 only at the final exit
    assert oracle_reach(table) == pytest.approx([1.0, 0.5, 0.25])


def test_predicted_latency_is_reach_weighted_sum() -> None:
    assert predicted_latency([1.0, 0.5, 0.25], [0.2, 0.4, 0.8]) == pytest.approx(0.2 + 0.2 + 0.2)


def test_uniform_threshold_respects_accuracy_drop_and_minimises_cost() -> None:
    table = random_table(4)
    final = (table.predictions[-1] == table.labels).mean()
    costs = [0.1, 0.3, 0.6]
    candidates = [0.05 * i for i in range(1, 40)]
    chosen = choose_uniform_threshold(table, 0.1, candidates, costs)
    assert chosen is not None
    ok = [t for t in candidates if final - outcome(table, [t, t]).accuracy <= 0.1]
    assert chosen in ok
    cost = lambda t: predicted_latency(outcome(table, [t, t]).reach_fractions, costs)  # noqa: E731
    assert cost(chosen) == pytest.approx(min(cost(t) for t in ok))


def test_uniform_threshold_none_when_nothing_qualifies() -> None:
    table = random_table(5)
    # every candidate sends everything out at exit 0, which is much worse than the final exit
    assert choose_uniform_threshold(table, 0.0, [100.0], [0.1, 0.1, 0.1]) is None
