"""Per-exit outputs on a dataset, and what a set of entropy thresholds would do with them.

Used to *choose* thresholds on a calibration split before anything is deployed; the
runtime itself really stops (it never computes the exits it does not reach).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch

from calibration.data import Dataset, iterate_batches
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class ExitTable:
    """predictions and entropies of every exit (K, N), and the labels (N,)."""

    predictions: np.ndarray
    entropies: np.ndarray
    labels: np.ndarray

    @property
    def num_exits(self) -> int:
        return self.predictions.shape[0]


@torch.no_grad()
def exit_table(net: MultiExitNetwork, data: Dataset, batch_size: int = 500) -> ExitTable:
    net.eval()
    preds, ents = [], []
    for images, _ in iterate_batches(data, batch_size):
        logits = net(torch.from_numpy(images))
        log_probs = [torch.log_softmax(z, dim=1) for z in logits]
        preds.append(np.stack([lp.argmax(1).numpy() for lp in log_probs]))
        ents.append(np.stack([-(lp.exp() * lp).sum(1).numpy() for lp in log_probs]))
    return ExitTable(np.concatenate(preds, axis=1), np.concatenate(ents, axis=1), data.labels)


def exits_taken(table: ExitTable, thresholds: Sequence[float | None]) -> np.ndarray:
    """Index of the first exit whose entropy passes its threshold (the final one otherwise)."""
    limits = np.array([-np.inf if t is None else t for t in thresholds] + [np.inf])
    passed = table.entropies <= limits[:, None]
    return passed.argmax(axis=0)


@dataclass(frozen=True)
class Outcome:
    accuracy: float
    exit_fractions: list[float]
    reach_fractions: list[float]  # fraction of samples that run each segment


def outcome(table: ExitTable, thresholds: Sequence[float | None]) -> Outcome:
    taken = exits_taken(table, thresholds)
    chosen = table.predictions[taken, np.arange(len(taken))]
    fractions = np.bincount(taken, minlength=table.num_exits) / len(taken)
    reach = 1.0 - np.concatenate([[0.0], np.cumsum(fractions)[:-1]])
    return Outcome(float((chosen == table.labels).mean()), fractions.tolist(), reach.tolist())


def oracle_reach(table: ExitTable) -> list[float]:
    """Reach fractions if every sample left at the earliest exit already agreeing with the final one."""
    agrees = table.predictions == table.predictions[-1]
    first = agrees.argmax(axis=0)
    fractions = np.bincount(first, minlength=table.num_exits) / len(first)
    return (1.0 - np.concatenate([[0.0], np.cumsum(fractions)[:-1]])).tolist()


def predicted_latency(reach: Sequence[float], segment_ms: Sequence[float]) -> float:
    """Mean latency = sum over segments of P(reach segment) x its measured latency."""
    return float(np.dot(reach, segment_ms))


def choose_uniform_threshold(table: ExitTable, max_drop: float, candidates: Sequence[float], segment_ms: Sequence[float]) -> float | None:
    """The cheapest single threshold (for every early exit) whose accuracy stays within
    `max_drop` of the final exit's on this table; None if none does."""
    final = float((table.predictions[-1] == table.labels).mean())
    best: tuple[float, float] | None = None
    for t in candidates:
        result = outcome(table, [t] * (table.num_exits - 1))
        cost = predicted_latency(result.reach_fractions, segment_ms)
        if final - result.accuracy <= max_drop and (best is None or cost < best[0]):
            best = (cost, t)
    return None if best is None else best[1]
