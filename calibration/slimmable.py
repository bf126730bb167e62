"""Training a network whose stages each run wide or narrow (engines.slimmable): the
sandwich rule with in-place distillation (universally slimmable networks, Yu & Huang 2019).

Per batch: the widest configuration (every stage full) learns from the labels; the
narrowest (every stage narrow) and `random_configs` configurations drawn at random from
the rest learn to match the widest one's predictions, computed in the same step (no
gradient flows into the teacher's side). The widest and narrowest bound every mixed
configuration's loss (the sandwich); a per-input width gate later picks among all of
them, so the mixed ones are trained too.

    loss = CE(y, y_full) + KL(y_full || y_narrow) + sum over the drawn c of KL(y_full || y_c)
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from calibration.adaptive import DepthForward, kl_to_teacher, super_loss
from calibration.data import Dataset
from calibration.train import EpochHook, StepFn, TrainConfig, fit
from engines.adaptive import AdaptiveBackbone


@dataclass(frozen=True)
class Sandwich:
    random_configs: int = 1  # mixed configurations drawn per batch besides the widest and narrowest


def sandwich_step(model: DepthForward, backbone: AdaptiveBackbone, sandwich: Sandwich, rng: random.Random) -> StepFn:
    """One step: widest from labels, the others distilled from it in place, one backward."""
    widest, narrowest = backbone.super_depth(), backbone.base_depth()
    mixed = [c for c in backbone.depth_configs() if c not in (widest, narrowest)]

    def step(x: torch.Tensor, y: torch.Tensor) -> float:
        teacher, _ = model(x, widest)
        loss = super_loss(teacher, y)
        drawn = rng.sample(mixed, min(sandwich.random_configs, len(mixed)))
        for config in [narrowest, *drawn]:
            student, _ = model(x, config)
            loss = loss + kl_to_teacher(student, teacher)
        loss.backward()
        backbone.set_depth(widest)
        return float(loss.item())

    return step


def train_slimmable(
    backbone: AdaptiveBackbone, data: Dataset, cfg: TrainConfig, sandwich: Sandwich = Sandwich(), on_epoch: EpochHook | None = None,
) -> list[float]:
    """The sandwich rule on one process; the backbone is left at full width."""
    if backbone.variant_kind != "width":
        raise ValueError("the sandwich rule trains a network of narrow and wide stages (engines.slimmable)")
    model = DepthForward(backbone)
    step = sandwich_step(model, backbone, sandwich, random.Random(cfg.seed))
    try:
        return fit(model, list(backbone.parameters()), data, cfg, step, "slimmable", on_epoch)
    finally:
        backbone.set_depth(backbone.super_depth())
