"""Temperature scaling and ECE on synthetic logits whose true calibration is known."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.temperature import calibrate_exits, expected_calibration_error, fit_temperature, softmax


def sampled(true_t: float, n: int = 20000, classes: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Logits and labels drawn from softmax(logits / true_t): calibrated at T = true_t."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0.0, 3.0, (n, classes))
    probs = softmax(logits, true_t)
    labels = (probs.cumsum(axis=1) > rng.random((n, 1))).argmax(axis=1)
    return logits.astype(np.float32), labels


@pytest.mark.parametrize("true_t", [0.5, 1.0, 2.5])
def test_fit_recovers_the_temperature_labels_were_drawn_with(true_t: float) -> None:
    logits, labels = sampled(true_t)
    assert fit_temperature(logits, labels) == pytest.approx(true_t, rel=0.08)


def test_ece_of_a_hand_made_case() -> None:
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    # bins (15 wide): 0.9 -> acc 0.5 vs conf 0.9 (2 samples); 0.6 -> 1 vs 0.6; 0.7 -> 1 vs 0.7
    expected = 0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3
    assert expected_calibration_error(probs, labels) == pytest.approx(expected)


def test_ece_is_small_when_calibrated_and_large_when_overconfident() -> None:
    logits, labels = sampled(1.0)
    assert expected_calibration_error(softmax(logits), labels) < 0.02
    assert expected_calibration_error(softmax(logits, 0.3), labels) > 0.1


def test_calibrating_overconfident_exits_lowers_every_ece() -> None:
    logits, labels = sampled(1.0)
    # three exits over the same samples: over-, under- and a little overconfident
    exits = [logits * 3.0, logits * 0.5, logits * 1.5]
    results = calibrate_exits(exits, labels)
    for result, scale in zip(results, [3.0, 0.5, 1.5]):
        assert result.temperature == pytest.approx(scale, rel=0.08)
        assert result.ece_after < result.ece_before / 2


def test_mismatched_inputs_are_refused() -> None:
    with pytest.raises(ValueError, match="matching"):
        fit_temperature(np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.int64))


def test_an_already_calibrated_exit_keeps_temperature_one() -> None:
    logits, labels = sampled(1.0, n=4000, seed=3)
    results = calibrate_exits([logits * 3.0, logits], labels)
    assert not results[0].kept_at_one and results[0].temperature == pytest.approx(3.0, rel=0.1)
    if results[1].kept_at_one:
        assert results[1].temperature == 1.0 and results[1].ece_after == results[1].ece_before
    else:  # the fit helped on the held-out half: it must be close to the truth
        assert results[1].temperature == pytest.approx(1.0, rel=0.1)
