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
    """One exit's fitted temperature and its ECE before and after, on the data given."""

    temperature: float
    ece_before: float
    ece_after: float


def calibrate_exits(exit_logits: list[np.ndarray], labels: np.ndarray) -> list[ExitCalibration]:
    """Fit every exit's temperature on (calibration-split) logits."""
    results = []
    for logits in exit_logits:
        t = fit_temperature(logits, labels)
        before = expected_calibration_error(softmax(logits), labels)
        after = expected_calibration_error(softmax(logits, t), labels)
        results.append(ExitCalibration(t, before, after))
    return results
