"""Exit decision rules compared on the same exits (calibration.rules)."""

import numpy as np
import pytest

from calibration.bench.rules import read_bench
from calibration.placement import CandidateCosts
from calibration.rules import RULES, LogisticRule, compare_rules, rule_table
from calibration.temperature import softmax
from edge.errors import UserError

N, CLASSES = 3000, 5


def logits(seed: int) -> tuple[list[np.ndarray], np.ndarray]:
    """Two candidate exits and a final one that is right on every image. Each candidate
    is right and sure on some images (70%, then 85%), unsure and random on the rest."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, CLASSES, N)
    out = []
    for right_share in (0.7, 0.85):
        z = rng.normal(0.0, 0.3, (N, CLASSES))
        right = rng.random(N) < right_share
        z[right, labels[right]] += 4.0
        z[~right, rng.integers(0, CLASSES, (~right).sum())] += 0.5
        out.append(z)
    final = rng.normal(0.0, 0.3, (N, CLASSES))
    final[np.arange(N), labels] += 6.0
    return [*out, final], labels


def costs() -> CandidateCosts:
    return CandidateCosts([0.1, 0.1, 0.1], [0.01, 0.01], boundary_ms=0.01, overhead_ms=0.01)


def test_a_cascade_predicts_from_the_mean_of_the_probabilities_so_far_and_keeps_the_final_exit():
    z, labels = logits(0)
    table = rule_table("cascade", z, labels)
    p = [softmax(x) for x in z]
    assert np.array_equal(table.predictions[1], ((p[0] + p[1]) / 2).argmax(axis=1))
    assert np.array_equal(table.predictions[0], p[0].argmax(axis=1))
    assert np.array_equal(table.predictions[2], p[2].argmax(axis=1))
    assert table.criteria == ["entropy", "cascade"]


def test_agreement_ranks_every_disagreeing_image_after_every_agreeing_one():
    z, labels = logits(0)
    table = rule_table("agreement", z, labels)
    agree = table.predictions[1] == table.predictions[0]
    assert 0 < agree.sum() < N
    assert table.score("agreement")[1][~agree].min() > table.score("agreement")[1][agree].max()


def test_the_logistic_rule_scores_images_that_agree_with_the_final_exit_lower():
    z, labels = logits(0)
    probs = [softmax(x) for x in z]
    rule = LogisticRule.fit(probs)
    held_out = [softmax(x) for x in logits(1)[0]]
    scores = rule.scores(held_out, 0)
    agrees = held_out[0].argmax(axis=1) == held_out[-1].argmax(axis=1)
    assert scores[agrees].mean() < scores[~agrees].mean() - 0.3


def test_an_unknown_rule_is_named():
    z, labels = logits(0)
    with pytest.raises(ValueError, match="unknown rule 'bogus'"):
        rule_table("bogus", z, labels)


def test_rules_without_bench_costs_say_to_run_the_bench_first(tmp_path):
    with pytest.raises(UserError, match="run edge-bench first"):
        read_bench(tmp_path)


def test_every_rule_meets_the_target_on_calibration_and_is_judged_on_test():
    calibration, test = logits(0), logits(1)
    results = compare_rules(calibration, test, costs(), [0, 1], max_drop=0.01)
    assert [r.rule for r in results] == list(RULES)
    for r in results:
        assert r.calibration_drop_pt <= 1.0 + 1e-9
        assert sum(r.exit_fractions) == pytest.approx(1.0)
        assert r.predicted_ratio < 1.0  # confident exits on most images pay on these costs
        assert r.vs_oracle >= 0.95  # nobody beats the oracle by much at a 1-point target
        assert r.test_drop_pt < 2.5  # the thresholds hold on the other split
