"""Temperature scaling per exit (seed 001) and the expected calibration error.

One scalar T per exit divides that exit's logits; it is fitted by minimising the
negative log-likelihood on a held-out calibration split, never the test split. T
changes no prediction, only how confident each exit claims to be, so entropy and
max-probability thresholds mean the same thing at every exit.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

MIN_T, MAX_T = 0.05, 20.0


def fit_temperature(logits: np.ndarray, labels: np.ndarray, steps: int = 200) -> float:
    """The T > 0 minimising the mean NLL of softmax(logits / T) on these labels."""
    if len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need matching, non-empty logits and labels, got {len(logits)} and {len(labels)}")
    z = torch.from_numpy(np.asarray(logits, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=steps, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(z / log_t.exp(), y)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(np.clip(np.exp(log_t.item()), MIN_T, MAX_T))


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Sum over equal-width confidence bins of |accuracy - mean confidence|, weighted by
    the bin's share of samples."""
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            ece += members.mean() * abs(correct[members].mean() - confidence[members].mean())
    return float(ece)


@dataclass(frozen=True)
class ExitCalibration:
    """One exit's temperature and its ECE before and after, on the data given."""

    temperature: float
    ece_before: float
    ece_after: float
    kept_at_one: bool = False  # the fitted T did not lower ECE on the held-out half


def calibrate_exits(exit_logits: list[np.ndarray], labels: np.ndarray, seed: int = 0) -> list[ExitCalibration]:
    """Every exit's temperature from (calibration-split) logits. T is fitted on one half
    and kept only if it lowers ECE on the other half (an exit that is already calibrated,
    often the final one, would otherwise get a T that moves ECE by noise); then refitted
    on all of it."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(labels))
    fit_rows, check_rows = order[: len(order) // 2], order[len(order) // 2 :]
    results = []
    for logits in exit_logits:
        before = expected_calibration_error(softmax(logits), labels)
        trial = fit_temperature(logits[fit_rows], labels[fit_rows])
        check = logits[check_rows], labels[check_rows]
        helps = expected_calibration_error(softmax(check[0], trial), check[1]) < expected_calibration_error(softmax(check[0]), check[1])
        t = fit_temperature(logits, labels) if helps else 1.0
        results.append(ExitCalibration(t, before, expected_calibration_error(softmax(logits, t), labels), not helps))
    return results
