"""Learned exit gates (seed 004): a small gate per early exit decides whether to leave.

Gate k reads the exit's pooled features and its (temperature-scaled) probabilities and
outputs the probability of leaving there. All gates train together, exit heads and
backbone frozen, on the cost-weighted loss

    (1 - alpha) * sum_i P(leave at i) * CE_i  +  alpha * sum_i P(leave at i) * cost_i

with P(leave at i) = g_i * prod_{j<i} (1 - g_j) (the final exit takes the rest) and
cost_i the measured latency of reaching exit i over that of the whole chain. alpha
trades accuracy against measured cost; `gates_for_budget` finds it by bisection for a
requested mean latency. In the engines the gate's score is 1 - g: lower = more confident.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from calibration.data import Dataset, iterate_batches
from calibration.exits import ExitTable, outcome, table_from_logits
from calibration.latency import LatencyModel
from calibration.temperature import softmax
from engines.partition import MultiExitNetwork

log = logging.getLogger(__name__)

GATE_THRESHOLD = 0.5  # leave when g >= 0.5, i.e. score 1 - g <= 0.5


class ExitGate(nn.Module):
    """g = sigmoid(w . [mean-pooled features, probs] + b)."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels + classes, 1)

    def forward(self, features: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
        return self.gate_of(torch.cat([features.mean(dim=(2, 3)), probs], dim=1))

    def gate_of(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(inputs)).squeeze(1)


@dataclass
class GateData:
    """What gate training needs from a dataset, computed once: per early exit the gate's
    inputs, and per exit the cross-entropy of its prediction."""

    inputs: list[torch.Tensor]  # (N, C_k + classes) per early exit
    cross_entropy: torch.Tensor  # (K, N)
    logits: list[np.ndarray]  # per exit, for tables
    labels: np.ndarray


@dataclass
class ExitOutputs:
    """One pass of the network over a dataset: each early exit's mean-pooled features
    (N, C_k) and every exit's logits (N, classes)."""

    pooled: list[torch.Tensor]
    logits: list[np.ndarray]
    labels: np.ndarray


@torch.no_grad()
def exit_outputs(net: MultiExitNetwork, data: Dataset, batch_size: int = 500) -> ExitOutputs:
    net.eval()
    pooled: list[list[torch.Tensor]] = [[] for _ in range(net.num_exits - 1)]
    logits: list[list[torch.Tensor]] = [[] for _ in range(net.num_exits)]
    for images, _ in iterate_batches(data, batch_size):
        x = torch.from_numpy(images)
        for k, segment in enumerate(net.segments):
            x, z = segment(x)
            logits[k].append(z)
            if k < net.num_exits - 1:
                pooled[k].append(x.mean(dim=(2, 3)))
    return ExitOutputs([torch.cat(p) for p in pooled], [torch.cat(z).numpy() for z in logits], data.labels)


def gate_data(net: MultiExitNetwork, data: Dataset, temperatures: Sequence[float], batch_size: int = 500) -> GateData:
    return gate_data_from(exit_outputs(net, data, batch_size), temperatures)


def gate_data_from(outputs: ExitOutputs, temperatures: Sequence[float]) -> GateData:
    """Gate inputs (pooled features, probabilities at T) and each exit's cross-entropy at T."""
    labels = torch.from_numpy(outputs.labels.astype(np.int64))
    logits = [torch.from_numpy(z) for z in outputs.logits]
    ce = torch.stack([nn.functional.cross_entropy(z / t, labels, reduction="none") for z, t in zip(logits, temperatures)])
    inputs = [
        torch.cat([p, torch.from_numpy(softmax(z, t).astype(np.float32))], dim=1)
        for p, z, t in zip(outputs.pooled, outputs.logits, temperatures)
    ]
    return GateData(inputs, ce, outputs.logits, outputs.labels)


def exit_costs(model: LatencyModel) -> torch.Tensor:
    """Latency of leaving at each exit over that of the whole chain (the last is 1)."""
    reach = np.cumsum(model.segment_ms)
    return torch.tensor(reach / reach[-1], dtype=torch.float32)


def gate_loss(gates: torch.Tensor, cross_entropy: torch.Tensor, costs: torch.Tensor, alpha: float) -> torch.Tensor:
    """gates (K-1, N) exit probabilities; cross_entropy (K, N); costs (K,)."""
    stay = torch.cumprod(1.0 - gates, dim=0)  # P(passing exits 0..i without leaving)
    before = torch.cat([torch.ones_like(stay[:1]), stay[:-1]])
    leave = torch.cat([gates * before, stay[-1:]])  # (K, N), sums to 1 per sample
    return ((1.0 - alpha) * (leave * cross_entropy).sum(0) + alpha * (leave * costs[:, None]).sum(0)).mean()


def train_gates(
    data: GateData, costs: torch.Tensor, alpha: float, epochs: int = 60, lr: float = 0.05, seed: int = 0,
) -> list[ExitGate]:
    """Gates fitted on `data` (full batch, Adam); inputs standardised during training and
    the scaling folded into the weights after, so the exported gate is one Linear."""
    torch.manual_seed(seed)
    classes = data.logits[0].shape[1]
    gates = [ExitGate(x.shape[1] - classes, classes) for x in data.inputs]
    means = [x.mean(0) for x in data.inputs]
    stds = [x.std(0).clamp_min(1e-6) for x in data.inputs]
    normalised = [(x - m) / s for x, m, s in zip(data.inputs, means, stds)]
    params = [p for g in gates for p in g.parameters()]
    optimizer = torch.optim.Adam(params, lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        g = torch.stack([gate.gate_of(x) for gate, x in zip(gates, normalised)])
        loss = gate_loss(g, data.cross_entropy, costs, alpha)
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for gate, m, s in zip(gates, means, stds):
            w = gate.linear.weight / s
            gate.linear.bias.sub_((w * m).sum())
            gate.linear.weight.copy_(w)
    return [g.eval() for g in gates]


@torch.no_grad()
def gate_scores(gates: Sequence[ExitGate], data: GateData) -> np.ndarray:
    """(K-1, N) scores as the engines compute them: 1 - g."""
    return np.stack([(1.0 - g.gate_of(x)).numpy() for g, x in zip(gates, data.inputs)])


def gate_table(gates: Sequence[ExitGate], data: GateData, temperatures: Sequence[float]) -> ExitTable:
    return table_from_logits(data.logits, data.labels, temperatures, gate_scores(gates, data))


@dataclass(frozen=True)
class BudgetResult:
    alpha: float
    gates: list[ExitGate]
    predicted_ms: float
    accuracy: float
    feasible: bool


def gates_for_budget(
    data: GateData, temperatures: Sequence[float], model: LatencyModel, budget_ms: float, steps: int = 10,
) -> BudgetResult:
    """The smallest alpha (most accurate gates) whose predicted mean latency at the gate
    threshold meets `budget_ms` on `data`; infeasible if even alpha = 1 does not."""
    return _bisect_alpha(data, temperatures, model, lambda ms, _: ms <= budget_ms, cheapest_first=True, steps=steps)


def gates_for_accuracy(
    data: GateData, temperatures: Sequence[float], model: LatencyModel, min_accuracy: float, steps: int = 10,
) -> BudgetResult:
    """The largest alpha (cheapest gates) whose accuracy on `data` stays >= min_accuracy."""
    return _bisect_alpha(data, temperatures, model, lambda _, accuracy: accuracy >= min_accuracy, cheapest_first=False, steps=steps)


def _bisect_alpha(
    data: GateData, temperatures: Sequence[float], model: LatencyModel, meets: Callable[[float, float], bool],
    cheapest_first: bool, steps: int,
) -> BudgetResult:
    """Bisection on alpha, assuming a larger alpha exits earlier (cheaper, less accurate).
    `meets(predicted_ms, accuracy)` says whether a trial satisfies the request."""
    costs = exit_costs(model)
    thresholds = [GATE_THRESHOLD] * len(data.inputs)

    def attempt(alpha: float) -> BudgetResult:
        gates = train_gates(data, costs, alpha)
        result = outcome(gate_table(gates, data, temperatures), thresholds, "gate")
        ms = model.predict(result.reach_fractions, thresholds)
        return BudgetResult(alpha, gates, ms, result.accuracy, meets(ms, result.accuracy))

    # The end of the range most likely to meet the requirement first: alpha 1 for a
    # latency budget, alpha 0 for an accuracy floor.
    best = attempt(1.0 if cheapest_first else 0.0)
    if not best.feasible:
        log.warning("gates: not even alpha %.0f meets the request (%.3f ms, accuracy %.2f%%)", best.alpha, best.predicted_ms, 100 * best.accuracy)
        return best
    low, high = 0.0, 1.0
    for _ in range(steps):
        middle = (low + high) / 2
        trial = attempt(middle)
        if trial.feasible == cheapest_first:
            high = middle
        else:
            low = middle
        if trial.feasible:
            best = trial
    log.info("gates: alpha %.4f predicts %.3f ms, accuracy %.2f%%", best.alpha, best.predicted_ms, 100 * best.accuracy)
    return best
