"""Exit decision rules compared on the same exits: how close each gets to the exits' own
oracle (every image leaving at the earliest exit that agrees with the final one).

The runtime decides with entropy (or max probability, or a learned gate) of the exit it
is at. The rules here also look back: whether the exit agrees with the previous one,
the mean of the probabilities so far (a cascade, which also changes the prediction),
or a logistic model of several such features fitted on the calibration split to
predict agreement with the final exit. Each rule yields an `ExitTable` whose score
thresholds `calibration.thresholds` chooses as for any criterion.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from calibration.exits import ExitTable, oracle_reach, outcome
from calibration.placement import CandidateCosts
from calibration.temperature import softmax
from calibration.thresholds import Target, search_thresholds

RULES = ("entropy", "maxprob", "margin", "agreement", "cascade", "cascade-geometric", "logistic")


def entropy(p: np.ndarray) -> np.ndarray:
    return -(p * np.log(np.maximum(p, 1e-30))).sum(axis=1)


def _top_two(p: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.sort(p, axis=1)
    return s[:, -1], s[:, -2]


def _cascade(probs: Sequence[np.ndarray], k: int) -> np.ndarray:
    return np.mean(probs[: k + 1], axis=0)


def _cascade_geometric(probs: Sequence[np.ndarray], k: int) -> np.ndarray:
    logs = np.mean([np.log(np.maximum(p, 1e-30)) for p in probs[: k + 1]], axis=0)
    return softmax(logs, 1.0)


def features(probs: Sequence[np.ndarray], k: int) -> np.ndarray:
    """(N, 8) what exit k knows without the exits after it: its top probability,
    entropy and margin, the cascade's top probability and entropy, whether it agrees
    with the previous exit, that exit's top probability, whether the cascade agrees
    with it (1, 1, 1 at the first exit)."""
    p = probs[k]
    top, second = _top_two(p)
    q = _cascade(probs, k)
    columns = [top, entropy(p), top - second, q.max(axis=1), entropy(q)]
    if k == 0:
        columns += [np.ones(len(p))] * 3
    else:
        previous = probs[k - 1].argmax(axis=1)
        columns += [(p.argmax(axis=1) == previous).astype(float), probs[k - 1].max(axis=1), (q.argmax(axis=1) == previous).astype(float)]
    return np.stack(columns, axis=1)


@dataclass
class LogisticRule:
    """Per early exit, P(this exit agrees with the final one | features), fitted on one
    split; the score is 1 - P."""

    models: list[Any]  # sklearn's LogisticRegression, imported when fitting

    @classmethod
    def fit(cls, probs: Sequence[np.ndarray]) -> LogisticRule:
        from sklearn.linear_model import LogisticRegression  # lazy: heavy, and only this rule needs it

        final = probs[-1].argmax(axis=1)
        models = []
        for k in range(len(probs) - 1):
            agrees = (probs[k].argmax(axis=1) == final).astype(int)
            if agrees.min() == agrees.max():  # one class only: a constant model
                agrees[0] = 1 - agrees[0]
            models.append(LogisticRegression(max_iter=1000).fit(features(probs, k), agrees))
        return cls(models)

    def scores(self, probs: Sequence[np.ndarray], k: int) -> np.ndarray:
        return 1.0 - self.models[k].predict_proba(features(probs, k))[:, 1]


ScoreFn = Callable[[Sequence[np.ndarray], int], tuple[np.ndarray, np.ndarray]]


def _rule(name: str, logistic: LogisticRule | None) -> ScoreFn:
    """(predictions, scores) of early exit k under the rule; lower score = more confident."""

    def own(p: np.ndarray, score: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return p.argmax(axis=1), score

    if name == "entropy":
        return lambda probs, k: own(probs[k], entropy(probs[k]))
    if name == "maxprob":
        return lambda probs, k: own(probs[k], 1.0 - probs[k].max(axis=1))
    if name == "margin":
        return lambda probs, k: own(probs[k], 1.0 - np.subtract(*_top_two(probs[k])))
    if name == "agreement":
        # a disagreeing exit ranks after every agreeing one, but a loose threshold still passes it
        def agreement(probs: Sequence[np.ndarray], k: int) -> tuple[np.ndarray, np.ndarray]:
            p = probs[k]
            penalty = 0.0 if k == 0 else 2 * np.log(p.shape[1]) * (p.argmax(axis=1) != probs[k - 1].argmax(axis=1))
            return own(p, entropy(p) + penalty)
        return agreement
    if name in ("cascade", "cascade-geometric"):
        combine = _cascade if name == "cascade" else _cascade_geometric
        return lambda probs, k: own(combine(probs, k), entropy(combine(probs, k)))
    if name == "logistic":
        if logistic is None:
            raise ValueError("the logistic rule needs its fitted models")
        return lambda probs, k: own(probs[k], logistic.scores(probs, k))
    raise ValueError(f"unknown rule {name!r}; choose from {', '.join(RULES)}")


def rule_table(name: str, logits: Sequence[np.ndarray], labels: np.ndarray, logistic: LogisticRule | None = None) -> ExitTable:
    """The table of a chain whose exits give `logits` (the final one last) under a rule:
    its criterion is the rule's name. The final exit keeps its own prediction."""
    probs = [softmax(z, 1.0) for z in logits]
    decide = _rule(name, logistic)
    early = [decide(probs, k) for k in range(len(probs) - 1)]
    predictions = np.stack([*(p for p, _ in early), probs[-1].argmax(axis=1)])
    scores = np.stack([*(s for _, s in early), np.zeros(len(labels))])
    return ExitTable(predictions, entropy_rows(probs), np.asarray(labels), {name: scores} if name != "entropy" else {})


def entropy_rows(probs: Sequence[np.ndarray]) -> np.ndarray:
    return np.stack([entropy(p) for p in probs])


@dataclass(frozen=True)
class RuleResult:
    rule: str
    thresholds: list[float | None]
    calibration_drop_pt: float
    test_drop_pt: float
    predicted_ratio: float  # on the test split, from the measured costs, against the uncut network
    vs_oracle: float
    exit_fractions: list[float]  # on the test split


def compare_rules(
    calibration: tuple[Sequence[np.ndarray], np.ndarray], test: tuple[Sequence[np.ndarray], np.ndarray],
    costs: CandidateCosts, chosen: Sequence[int], max_drop: float, count: int = 24, rules: Sequence[str] = RULES,
) -> list[RuleResult]:
    """Each rule on the exits at candidate indices `chosen`: thresholds chosen on the
    calibration split (logits of every candidate and the final exit, labels) for an
    accuracy drop of at most `max_drop` (a fraction), judged on the test split."""
    rows = [*chosen, len(costs.head_ms)]
    cal_logits, test_logits = [calibration[0][r] for r in rows], [test[0][r] for r in rows]
    model, static_ms = costs.latency_model(chosen), costs.static_ms()
    oracle = model.predict(oracle_reach(rule_table("entropy", test_logits, test[1])), [0.0] * len(chosen))
    logistic = LogisticRule.fit([softmax(z, 1.0) for z in cal_logits]) if "logistic" in rules else None
    results = []
    for rule in rules:
        cal, judged = (rule_table(rule, z, y, logistic) for z, y in ((cal_logits, calibration[1]), (test_logits, test[1])))
        reference = float((cal.predictions[-1] == cal.labels).mean())
        plan = search_thresholds(cal, rule, model, Target(max_drop=max_drop, reference_accuracy=reference), count)
        result = outcome(judged, plan.thresholds, rule)
        ms = model.predict(result.reach_fractions, plan.thresholds)
        test_final = float((judged.predictions[-1] == judged.labels).mean())
        results.append(RuleResult(rule, plan.thresholds, 100 * (reference - plan.accuracy), 100 * (test_final - result.accuracy),
                                  ms / static_ms, ms / oracle, result.exit_fractions))
    return results
