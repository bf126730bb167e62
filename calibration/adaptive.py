"""Skip-aware self-distillation (seed 003, Algorithm 1): train the super-net and the base-net together.

Per batch: the super-net (nothing skipped) learns from the labels; the base-net (every
skippable sub-path skipped) learns to match the super-net's stage outputs and
predictions. loss = alpha * CE(y, y_super) + (1 - alpha) * (sum over stages of
KL(h_super || h_base) + KL(y_super || y_base)). The super-net is the teacher: no
gradient flows into its side of a KL term.

A stage output h (n, C, H, W) is compared as a distribution over channels at every
position (softmax over C), averaged over positions: a KL summed over a whole feature map
would grow with its area and drown the other terms.

Two ways to take a step, with the same gradients:
  joint       super forward, base forward, one backward (the paper's Algorithm 1)
  sequential  super forward, backward, base forward, backward (the paper's footnote:
              DistributedDataParallel cannot take two forwards before one backward)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from calibration.data import Dataset
from calibration.train import EpochHook, StepFn, TrainConfig, fit
from engines.adaptive import AdaptiveBackbone

STEP_MODES = ("joint", "sequential")


@dataclass(frozen=True)
class SelfDistillation:
    alpha: float = 0.5  # weight of the super-net's cross-entropy
    features: bool = True  # distil every stage's output too; False = predictions only (the paper's ablation)


class DepthForward(nn.Module):
    """`forward(x, depth)` -> (logits, stage outputs) at that depth. The depth is an
    argument of forward so that DistributedDataParallel sees it."""

    def __init__(self, backbone: AdaptiveBackbone) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor, depth: str) -> tuple[torch.Tensor, list[torch.Tensor]]:
        self.backbone.set_depth(depth)
        return self.backbone.forward_stages(x)


def kl_to_teacher(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """KL(teacher || student) over dimension 1, averaged over every other position."""
    classes = student.shape[1]
    s = student.movedim(1, -1).reshape(-1, classes)
    t = teacher.detach().movedim(1, -1).reshape(-1, classes)
    return F.kl_div(F.log_softmax(s, dim=1), F.log_softmax(t, dim=1), log_target=True, reduction="batchmean")


def super_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits, labels)


def base_loss(
    super_out: tuple[torch.Tensor, list[torch.Tensor]], base_out: tuple[torch.Tensor, list[torch.Tensor]], features: bool = True,
) -> torch.Tensor:
    (y_super, h_super), (y_base, h_base) = super_out, base_out
    loss = kl_to_teacher(y_base, y_super)
    if features:
        for hs, hb in zip(h_super, h_base):
            loss = loss + kl_to_teacher(hb, hs)
    return loss


def self_distillation_step(
    model: nn.Module, backbone: AdaptiveBackbone, distill: SelfDistillation, mode: str = "joint",
) -> StepFn:
    """One step's forward and backward passes. `model` is a DepthForward, or a
    DistributedDataParallel around one (then mode must be sequential)."""
    if mode not in STEP_MODES:
        raise ValueError(f"step mode must be one of {STEP_MODES}, got {mode!r}")
    alpha = distill.alpha
    full, base = backbone.super_depth(), backbone.base_depth()

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        super_out = model(x, full)
        loss_super = alpha * super_loss(super_out[0], y)
        if mode == "sequential":
            loss_super.backward()
            super_out = (super_out[0].detach(), [h.detach() for h in super_out[1]])
        loss_base = (1.0 - alpha) * base_loss(super_out, model(x, base), distill.features)
        if mode == "sequential":
            loss_base.backward()
        else:
            (loss_super + loss_base).backward()
        backbone.set_depth(full)
        return float(loss_super.item() + loss_base.item())

    return step


def train_adaptive(
    backbone: AdaptiveBackbone,
    data: Dataset,
    cfg: TrainConfig,
    distill: SelfDistillation = SelfDistillation(),
    on_epoch: EpochHook | None = None,
    distributed: bool = False,
) -> list[float]:
    """Algorithm 1 on one process, or under torchrun with DistributedDataParallel when
    `distributed` (the process group must be initialised; every rank takes its share
    of each epoch's batches)."""
    model: nn.Module = DepthForward(backbone)
    shard, mode = (0, 1), "joint"
    if distributed:
        import torch.distributed as dist

        # Each pass leaves some parameters unused (the skippable blocks, or the skip BNs).
        model = nn.parallel.DistributedDataParallel(model, find_unused_parameters=True)
        shard, mode = (dist.get_rank(), dist.get_world_size()), "sequential"
    step = self_distillation_step(model, backbone, distill, mode)

    def end_of_epoch(epoch: int) -> None:
        if distributed:  # every rank, before rank 0 saves: the checkpoint holds the averaged statistics
            average_buffers(backbone)
        if on_epoch is not None:
            on_epoch(epoch)

    try:
        return fit(model, list(backbone.parameters()), data, cfg, step, "adaptive depth", end_of_epoch, shard)
    finally:
        backbone.set_depth(backbone.super_depth())


def average_buffers(module: nn.Module) -> None:
    """Average BN running statistics over the ranks (a collective: every rank calls it).
    DDP copies rank 0's buffers at each forward, but the last forward's update stays
    local to every rank."""
    import torch.distributed as dist

    world = dist.get_world_size()
    for buffer in module.buffers():
        if buffer.is_floating_point():
            dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
            buffer.div_(world)


@torch.no_grad()
def depth_accuracies(backbone: AdaptiveBackbone, data: Dataset, depths: list[str] | None = None, batch_size: int = 500) -> dict[str, float]:
    """Test accuracy of each depth configuration (all of them by default), in torch."""
    from calibration.train import exit_accuracies

    restore = backbone.depth
    results = {}
    try:
        for depth in depths or backbone.depth_configs():
            backbone.set_depth(depth)
            results[depth] = exit_accuracies(backbone, data, batch_size)[0]
    finally:
        backbone.set_depth(restore)
    return results
