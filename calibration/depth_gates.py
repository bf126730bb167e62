"""Per-input depth (seed 001's per-input skipping on seed 003's adaptive-depth stages).

After stage k of an adaptive-depth network a small gate reads the stage's mean-pooled
output and gives g = P(stage k+1 may run its base variant). Stage 0 has nothing before
it to decide, so its variant is the operating point's (the gates can be trained for
either: `firsts="FT"`). On the device each choice is a
separate engine, so a skipped half is never launched: the speed-up is measured, not
counted in FLOPs.

The gates train together on a frozen network with the cost-weighted loss of the exit
gates (seed 004, calibration.gates), over the tree of depth paths:

    sum over depth configurations c of  P(c) * ((1 - alpha) * CE_c + alpha * cost_c)

with P(c) the product of each gated stage's g (base) or 1 - g (full) along c's path, and
cost_c the measured latency of depth c over that of the full depth. Every path's pooled
outputs and cross-entropies are computed once (`depth_tree`); alpha is found by
bisection for a latency budget (`depth_gates_for_budget`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from calibration.data import Dataset, iterate_batches
from edge.manifest import FULL, SKIP
from engines.adaptive import AdaptiveBackbone, AdaptiveDepthError
from engines.partition import MultiExitNetwork

log = logging.getLogger(__name__)

ROUTE_THRESHOLD = 0.5  # the next stage runs its base variant when g >= this


class DepthGate(nn.Module):
    """g = sigmoid(w . mean-pooled features + b): P(the next stage may skip its skippable half)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.linear = nn.Linear(channels, 1)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.gate_of(features.mean(dim=(2, 3)))

    def gate_of(self, pooled: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.linear(pooled)).squeeze(1)


@dataclass
class DepthTree:
    """A frozen adaptive-depth network's outputs over a dataset along every depth path."""

    firsts: str  # stage 0's letters the tree holds (each an operating point's choice: nothing before it decides)
    gated: list[int]  # stages a gate chooses for (every later stage that can skip)
    pooled: dict[str, torch.Tensor]  # path through stages 0..k -> (N, C_k) mean-pooled output of stage k
    logits: dict[str, np.ndarray]  # depth configuration -> (N, classes) final logits
    cross_entropy: dict[str, torch.Tensor]  # depth configuration -> (N,)
    labels: np.ndarray

    @property
    def configs(self) -> list[str]:
        return list(self.logits)

    def accuracy(self, config: str) -> float:
        return float((self.logits[config].argmax(axis=1) == self.labels).mean())


def adaptive_stages(net: MultiExitNetwork) -> AdaptiveBackbone:
    """The network's adaptive backbone, with one segment per stage (what per-input depth routes)."""
    backbone = net.backbone
    if not isinstance(backbone, AdaptiveBackbone):
        raise AdaptiveDepthError("per-input depth needs an adaptive-depth network (edge-train-adaptive)")
    if net.splits != list(range(len(backbone.stages) - 1)):
        raise AdaptiveDepthError("per-input depth needs an exit after every stage but the last (one segment per stage)")
    if not any(stage.can_skip for stage in backbone.stages[1:]):
        raise AdaptiveDepthError("per-input depth needs a stage after the first that can skip; this network has none")
    return backbone


@torch.no_grad()
def depth_tree(net: MultiExitNetwork, data: Dataset, firsts: str = FULL, batch_size: int = 500) -> DepthTree:
    """Every depth path's pooled stage outputs and final logits over `data`, stage 0 at
    each letter of `firsts`."""
    backbone = adaptive_stages(net)
    stages = backbone.stages
    if not firsts or set(firsts) - {FULL, SKIP} or (SKIP in firsts and not stages[0].can_skip):
        allowed = f"{FULL}{SKIP}" if stages[0].can_skip else FULL
        raise AdaptiveDepthError(f"stage {backbone.block_names[0]} can start at {allowed!r} only, not {firsts!r}")
    letters = [tuple(dict.fromkeys(firsts))] + [(FULL, SKIP) if stage.can_skip else (FULL,) for stage in stages[1:]]
    pooled: dict[str, list[torch.Tensor]] = {}
    logits: dict[str, list[torch.Tensor]] = {}
    restore = backbone.depth
    net.eval()
    try:
        for images, _ in iterate_batches(data, batch_size):
            paths = {"": torch.from_numpy(images)}
            for k, segment in enumerate(net.segments):
                following: dict[str, torch.Tensor] = {}
                for prefix, x in paths.items():
                    for letter in letters[k]:
                        stages[k].skip = letter == SKIP
                        out, z = segment(x)
                        if k == len(stages) - 1:
                            logits.setdefault(prefix + letter, []).append(z)
                        else:
                            pooled.setdefault(prefix + letter, []).append(out.mean(dim=(2, 3)))
                            following[prefix + letter] = out
                paths = following
    finally:
        backbone.set_depth(restore)
    labels = torch.from_numpy(data.labels.astype(np.int64))
    final = {c: torch.cat(z) for c, z in logits.items()}
    return DepthTree(
        "".join(dict.fromkeys(firsts)), [k for k in range(1, len(stages)) if stages[k].can_skip], {p: torch.cat(v) for p, v in pooled.items()},
        {c: z.numpy() for c, z in final.items()},
        {c: nn.functional.cross_entropy(z, labels, reduction="none") for c, z in final.items()}, data.labels,
    )


def relative_costs(tree: DepthTree, config_ms: dict[str, float]) -> dict[str, float]:
    """Each configuration's measured latency over the dearest one's (the full depth's)."""
    missing = sorted(set(tree.configs) - set(config_ms))
    if missing:
        raise ValueError(f"no measured latency for depth configurations {missing}")
    dearest = max(config_ms[c] for c in tree.configs)
    return {c: config_ms[c] / dearest for c in tree.configs}


def path_probabilities(gates: dict[int, DepthGate], tree: DepthTree, inputs: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """P(configuration) per sample, (N,) each: the gates' choices multiplied along its path."""
    inputs = tree.pooled if inputs is None else inputs
    g = {prefix: gates[len(prefix)].gate_of(x) for prefix, x in inputs.items() if len(prefix) in gates}
    probabilities = {}
    for config in tree.configs:
        p = torch.ones(len(tree.labels))
        for j in tree.gated:
            p = p * (g[config[:j]] if config[j] == SKIP else 1.0 - g[config[:j]])
        probabilities[config] = p
    return probabilities


def depth_gate_loss(gates: dict[int, DepthGate], tree: DepthTree, costs: dict[str, float], alpha: float,
                    inputs: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
    """The expected cost-weighted loss, averaged over stage 0's letters (each sums to one)."""
    probabilities = path_probabilities(gates, tree, inputs)
    loss = sum(p * ((1.0 - alpha) * tree.cross_entropy[c] + alpha * costs[c]) for c, p in probabilities.items())
    return loss.mean() / len(tree.firsts)  # type: ignore[union-attr]


def train_depth_gates(tree: DepthTree, costs: dict[str, float], alpha: float, epochs: int = 80, lr: float = 0.05, seed: int = 0) -> dict[int, DepthGate]:
    """Gate j (deciding stage j, reading stage j-1's output) for every gated stage; full
    batch Adam on standardised inputs, the scaling folded into the weights after."""
    torch.manual_seed(seed)
    channels = {j: next(x for p, x in tree.pooled.items() if len(p) == j).shape[1] for j in tree.gated}
    gates = {j: DepthGate(channels[j]) for j in tree.gated}
    by_stage = {j: torch.cat([x for p, x in tree.pooled.items() if len(p) == j]) for j in tree.gated}
    means = {j: x.mean(0) for j, x in by_stage.items()}
    stds = {j: x.std(0).clamp_min(1e-6) for j, x in by_stage.items()}
    normalised = {p: (x - means[len(p)]) / stds[len(p)] for p, x in tree.pooled.items() if len(p) in gates}
    optimizer = torch.optim.Adam([p for g in gates.values() for p in g.parameters()], lr=lr)
    for _ in range(epochs):
        optimizer.zero_grad()
        depth_gate_loss(gates, tree, costs, alpha, normalised).backward()
        optimizer.step()
    with torch.no_grad():
        for j, gate in gates.items():
            w = gate.linear.weight / stds[j]
            gate.linear.bias.sub_((w * means[j]).sum())
            gate.linear.weight.copy_(w)
    return {j: g.eval() for j, g in gates.items()}


@torch.no_grad()
def routed_configs(gates: dict[int, DepthGate], tree: DepthTree, threshold: float = ROUTE_THRESHOLD, first: str | None = None) -> np.ndarray:
    """Each sample's depth configuration as the runtime routes it from stage 0 at `first`
    (default the tree's first): stage j skips when gate j >= threshold."""
    stages = len(next(iter(tree.configs)))
    paths = np.full(len(tree.labels), first or tree.firsts[0], dtype=object)
    for j in range(1, stages):
        if j not in gates:
            paths = paths + FULL
            continue
        letters = np.full(len(paths), FULL, dtype=object)
        for prefix in np.unique(paths):
            rows = np.flatnonzero(paths == prefix)
            g = gates[j].gate_of(tree.pooled[prefix][rows]).numpy()
            letters[rows[g >= threshold]] = SKIP
        paths = paths + letters
    return paths.astype(str)


@dataclass(frozen=True)
class RoutedOutcome:
    accuracy: float
    relative_cost: float  # predicted mean latency over the full depth's
    shares: dict[str, float]  # fraction of samples per depth configuration


def routed_outcome(configs: np.ndarray, tree: DepthTree, costs: dict[str, float]) -> RoutedOutcome:
    predictions = np.empty(len(configs), dtype=np.int64)
    for config in np.unique(configs):
        rows = configs == config
        predictions[rows] = tree.logits[str(config)][rows].argmax(axis=1)
    shares = {str(c): float((configs == c).mean()) for c in np.unique(configs)}
    return RoutedOutcome(float((predictions == tree.labels).mean()), sum(costs[c] * s for c, s in shares.items()), shares)


@dataclass(frozen=True)
class DepthGateResult:
    alpha: float
    gates: dict[int, DepthGate]
    outcome: RoutedOutcome
    feasible: bool


def depth_gates_for_budget(tree: DepthTree, costs: dict[str, float], budget: float, steps: int = 8) -> DepthGateResult:
    """The smallest alpha (most accurate gates) whose routed mean cost from the tree's
    first stage-0 letter, relative to the full depth, is at most `budget` on the tree's
    data; infeasible if alpha = 1 is not."""

    def attempt(alpha: float) -> DepthGateResult:
        gates = train_depth_gates(tree, costs, alpha)
        outcome = routed_outcome(routed_configs(gates, tree), tree, costs)
        return DepthGateResult(alpha, gates, outcome, outcome.relative_cost <= budget)

    best = attempt(1.0)
    if not best.feasible:
        log.warning("depth gates: not even alpha 1 meets %.3f of the full depth's latency (%.3f)", budget, best.outcome.relative_cost)
        return best
    low, high = 0.0, 1.0
    for _ in range(steps):
        trial = attempt((low + high) / 2)
        if trial.feasible:
            high, best = trial.alpha, trial
        else:
            low = trial.alpha
    return best


def routers(gates: dict[int, DepthGate], num_segments: int) -> list[DepthGate | None]:
    """The gates by the segment whose output they read (gate j reads segment j-1), for export."""
    return [gates.get(k + 1) for k in range(num_segments - 1)] + [None]

