"""Per-exit outputs on a dataset, and what a set of entropy thresholds would do with them.

Used to *choose* thresholds on a calibration split before anything is deployed; the
runtime itself really stops (it never computes the exits it does not reach).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from calibration.data import Dataset, iterate_batches
from calibration.temperature import softmax
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class ExitTable:
    """predictions and entropies of every exit (K, N), and the labels (N,); `scores`
    holds the other criteria's scores (K, N), lower = more confident."""

    predictions: np.ndarray
    entropies: np.ndarray
    labels: np.ndarray
    scores: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def num_exits(self) -> int:
        return self.predictions.shape[0]

    @property
    def criteria(self) -> list[str]:
        return ["entropy", *self.scores]

    def score(self, criterion: str) -> np.ndarray:
        if criterion == "entropy":
            return self.entropies
        if criterion not in self.scores:
            raise KeyError(f"no {criterion!r} scores in this table; it has {self.criteria}")
        return self.scores[criterion]


@torch.no_grad()
def exit_logits(net: MultiExitNetwork, data: Dataset, batch_size: int = 500) -> list[np.ndarray]:
    """Every exit's logits (N, classes) on `data`, in exit order."""
    net.eval()
    chunks: list[list[np.ndarray]] = [[] for _ in range(net.num_exits)]
    for images, _ in iterate_batches(data, batch_size):
        for k, z in enumerate(net(torch.from_numpy(images))):
            chunks[k].append(z.numpy())
    return [np.concatenate(c) for c in chunks]


def table_from_logits(
    logits: Sequence[np.ndarray], labels: np.ndarray, temperatures: Sequence[float] | None = None,
    gate_scores: np.ndarray | None = None,
) -> ExitTable:
    """Scores as the engines compute them: softmax(logits / T) per exit. `gate_scores`
    (K-1, N) are the early exits' gate scores, if gates were trained."""
    temperatures = list(temperatures) if temperatures is not None else [1.0] * len(logits)
    probs = [softmax(z, t) for z, t in zip(logits, temperatures)]
    predictions = np.stack([p.argmax(axis=1) for p in probs])
    entropies = np.stack([-(p * np.log(np.maximum(p, 1e-30))).sum(axis=1) for p in probs])
    scores = {"maxprob": np.stack([1.0 - p.max(axis=1) for p in probs])}
    if gate_scores is not None:
        scores["gate"] = np.concatenate([gate_scores, np.zeros((1, len(labels)))])  # the final exit takes all anyway
    return ExitTable(predictions, entropies, np.asarray(labels), scores)


def exit_table(net: MultiExitNetwork, data: Dataset, batch_size: int = 500) -> ExitTable:
    return table_from_logits(exit_logits(net, data, batch_size), data.labels)


def exits_taken(table: ExitTable, thresholds: Sequence[float | None], criterion: str = "entropy") -> np.ndarray:
    """Index of the first exit whose score passes its threshold (the final one otherwise)."""
    limits = np.array([-np.inf if t is None else t for t in thresholds] + [np.inf])
    passed = table.score(criterion) <= limits[:, None]
    return passed.argmax(axis=0)


@dataclass(frozen=True)
class Outcome:
    accuracy: float
    exit_fractions: list[float]
    reach_fractions: list[float]  # fraction of samples that run each segment


def outcome(table: ExitTable, thresholds: Sequence[float | None], criterion: str = "entropy") -> Outcome:
    taken = exits_taken(table, thresholds, criterion)
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
