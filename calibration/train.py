"""Training: the backbone, exit heads on the frozen backbone, or everything jointly.

Frozen (seed 000): the backbone is fixed (BN statistics too) and each exit head learns
by cross-entropy on the features it sees. Joint (BranchyNet, Shallow-Deep Networks):
the weighted sum of every exit's cross-entropy trains heads and backbone together.
Either can add self-distillation (seed 001): each early exit also matches the final
exit's softened probabilities (KL at a temperature), the final exit being the teacher.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from calibration.data import Dataset, iterate_batches
from edge.backends.onnxruntime_backend import online_cores
from engines.partition import MultiExitNetwork

EpochHook = Callable[[int], None]
StepFn = Callable[[torch.Tensor, torch.Tensor], float]  # forward, backward, return the loss


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = 3
    batch_size: int = 128
    lr: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    seed: int = 0
    shift: int = 0  # random translation by up to this many pixels
    flip: bool = False  # random horizontal flip (fine for clothes, wrong for digits)
    progress: bool = True


@dataclass(frozen=True)
class Distillation:
    """Early-exit loss = (1 - weight) * CE + weight * T^2 * KL(final_T || exit_T)."""

    weight: float = 0.5
    temperature: float = 3.0


def exit_loss(logits: torch.Tensor, labels: torch.Tensor, teacher: torch.Tensor | None, distill: Distillation | None) -> torch.Tensor:
    """One early exit's loss; `teacher` is the final exit's logits (no gradient flows into it)."""
    ce = F.cross_entropy(logits, labels)
    if distill is None or teacher is None:
        return ce
    t = distill.temperature
    kl = F.kl_div(F.log_softmax(logits / t, dim=1), F.log_softmax(teacher.detach() / t, dim=1), log_target=True, reduction="batchmean")
    return (1.0 - distill.weight) * ce + distill.weight * t * t * kl


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def set_threads(threads: int | None = None) -> None:
    torch.set_num_threads(threads or online_cores())


def train_backbone(model: nn.Module, data: Dataset, cfg: TrainConfig, on_epoch: EpochHook | None = None) -> list[float]:
    """Plain supervised training of a single-output network; returns the mean loss per epoch."""
    return _fit(model, list(model.parameters()), data, cfg, lambda x, y: F.cross_entropy(model(x), y), "backbone", on_epoch)


def train_exits_frozen(
    net: MultiExitNetwork, data: Dataset, cfg: TrainConfig, on_epoch: EpochHook | None = None, distill: Distillation | None = None,
    depths: Sequence[str] = (),
) -> list[float]:
    """Exit heads only, on a frozen backbone whose BN layers stay in eval mode. For an
    adaptive-depth backbone, `depths` lists the depth configurations every batch is
    seen through, so the heads serve each of them (the backbone's depth is restored)."""
    for p in net.backbone_parameters():
        p.requires_grad_(False)
    set_depth = getattr(net.backbone, "set_depth", None)
    if depths and set_depth is None:
        raise ValueError("depth configurations need an adaptive-depth backbone")
    restore = getattr(net.backbone, "depth", None)

    def one_depth(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        features = []
        with torch.no_grad():
            for segment in net.segment_list[:-1]:
                x = segment.body(x)
                features.append(x)
            teacher = net.segments[-1](x)[1] if distill is not None else None
        total = x.new_zeros(())
        for k, f in enumerate(features):
            total = total + exit_loss(net.exit_heads[k](f), y, teacher, distill)
        return total

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        net.backbone.eval()  # frozen BN statistics, whatever _fit set
        if not depths:
            return one_depth(x, y)
        total = x.new_zeros(())
        for depth in depths:
            set_depth(depth)  # type: ignore[misc]
            total = total + one_depth(x, y)
        return total / len(depths)

    try:
        return _fit(net, net.head_parameters(), data, cfg, loss, "exits (frozen)", on_epoch)
    finally:
        for p in net.backbone_parameters():
            p.requires_grad_(True)
        if restore is not None:
            set_depth(restore)  # type: ignore[misc]


def train_joint(
    net: MultiExitNetwork,
    data: Dataset,
    cfg: TrainConfig,
    exit_weights: Sequence[float] | None = None,
    on_epoch: EpochHook | None = None,
    distill: Distillation | None = None,
) -> list[float]:
    """Backbone and heads together: loss = sum_k w_k * loss(exit_k), the final exit by
    cross-entropy, the early ones also distilled from it when `distill` is given."""
    weights = list(exit_weights) if exit_weights is not None else [1.0] * net.num_exits
    if len(weights) != net.num_exits:
        raise ValueError(f"need {net.num_exits} exit weights, got {len(weights)}")

    def loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        outputs = net(x)
        final = outputs[-1]
        total = weights[-1] * F.cross_entropy(final, y)
        for w, logits in zip(weights[:-1], outputs[:-1]):
            total = total + w * exit_loss(logits, y, final, distill)
        return total

    return _fit(net, list(net.parameters()), data, cfg, loss, "joint", on_epoch)


def _fit(
    model: nn.Module,
    params: list[nn.Parameter],
    data: Dataset,
    cfg: TrainConfig,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    label: str,
    on_epoch: EpochHook | None,
) -> list[float]:
    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        loss = loss_fn(x, y)
        loss.backward()
        return loss.item()

    return fit(model, params, data, cfg, step, label, on_epoch)


def fit(
    model: nn.Module,
    params: list[nn.Parameter],
    data: Dataset,
    cfg: TrainConfig,
    step: StepFn,
    label: str,
    on_epoch: EpochHook | None = None,
    shard: tuple[int, int] = (0, 1),
) -> list[float]:
    """SGD with a one-cycle schedule; `step` computes the loss, back-propagates it and
    returns its value. `shard` = (rank, world): this process takes every world-th batch
    of the shared shuffled order, and every process takes the same number of steps
    (one waiting for a gradient exchange that never comes would hang them all)."""
    rank, world = shard
    seed_everything(cfg.seed)
    steps_per_epoch = (-(-len(data) // cfg.batch_size)) // world
    if steps_per_epoch < 1:
        raise ValueError(f"{len(data)} samples make fewer batches of {cfg.batch_size} than there are processes ({world})")
    optimizer = torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay, nesterov=True)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, cfg.lr, total_steps=cfg.epochs * steps_per_epoch, pct_start=0.15)
    generator = torch.Generator().manual_seed(cfg.seed + rank)
    losses = []
    model.train()
    for epoch in range(cfg.epochs):
        batches = itertools.islice(iterate_batches(data, cfg.batch_size, shuffle=True, seed=cfg.seed + epoch), rank, None, world)
        bar = tqdm(batches, total=steps_per_epoch, desc=f"{label} {epoch + 1}/{cfg.epochs}", disable=not cfg.progress, leave=False)
        total, count = 0.0, 0
        for images, labels in itertools.islice(bar, steps_per_epoch):
            x = augment(torch.from_numpy(images), cfg, generator)
            optimizer.zero_grad(set_to_none=True)
            value = step(x, torch.from_numpy(labels))
            optimizer.step()
            schedule.step()
            total += value * len(labels)
            count += len(labels)
            bar.set_postfix(loss=f"{total / count:.3f}")
        bar.close()
        losses.append(total / max(count, 1))
        if on_epoch is not None:
            on_epoch(epoch)
    model.eval()
    return losses


def augment(x: torch.Tensor, cfg: TrainConfig, generator: torch.Generator) -> torch.Tensor:
    if cfg.shift > 0:
        x = random_shift(x, cfg.shift, generator)
    if cfg.flip:
        mask = torch.rand(len(x), generator=generator) < 0.5
        x = torch.where(mask.view(-1, 1, 1, 1), x.flip(3), x)
    return x


def random_shift(x: torch.Tensor, shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by its own random offset, padding with zeros."""
    n, c, h, w = x.shape
    padded = F.pad(x, (shift, shift, shift, shift))
    dy = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None], rows, cols]


@torch.no_grad()
def exit_accuracies(model: nn.Module, data: Dataset, batch_size: int = 500) -> list[float]:
    """Accuracy of every exit (one entry for a plain backbone)."""
    model.eval()
    correct: np.ndarray | None = None
    for images, labels in iterate_batches(data, batch_size):
        outputs = model(torch.from_numpy(images))
        outputs = outputs if isinstance(outputs, list) else [outputs]
        hits = np.array([(o.argmax(1).numpy() == labels).sum() for o in outputs])
        correct = hits if correct is None else correct + hits
    assert correct is not None, "empty dataset"
    return (correct / len(data)).tolist()

