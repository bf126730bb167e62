"""Adaptive depth (seed 003): every residual stage = a mandatory sub-path + a skippable one.

`make_adaptive` regroups a BlockBackbone's blocks by stage. The first blocks of a stage
are mandatory; its last blocks form the skippable sub-path. Every BN layer in the
mandatory blocks becomes skip-aware: a second set of BN parameters and statistics,
used when the stage's skippable half is skipped, because the features reaching the
next stage then come through fewer layers.

The result is again a BlockBackbone whose blocks are the stages, so partitioning, exit
heads and export work unchanged. `set_depth("FTF")` picks the sub-network, one letter
per stage, T = skip (the paper's notation): "FFF" is the super-net, "TTT" the base-net.
"""

from __future__ import annotations

import copy
import itertools
from typing import Sequence

import torch
from torch import nn

from edge.manifest import FULL, SKIP, depth_problem
from engines.backbone import BlockBackbone


class SkipAwareBatchNorm2d(nn.Module):
    """Two BN layers for one place: `full` when the stage runs whole, `skip` when its
    skippable half is left out. The stage sets `skipping`."""

    def __init__(self, bn: nn.BatchNorm2d) -> None:
        super().__init__()
        self.full = bn
        self.skip = copy.deepcopy(bn)  # starts as the trained BN; learns its own statistics
        self.skipping = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) if self.skipping else self.full(x)


class AdaptiveStage(nn.Module):
    """mandatory -> (skippable unless skipped). With nothing skippable it is a plain stage."""

    def __init__(self, mandatory: Sequence[nn.Module], skippable: Sequence[nn.Module]) -> None:
        super().__init__()
        self.mandatory = nn.Sequential(*mandatory)
        self.skippable = nn.Sequential(*skippable)
        if len(self.skippable):
            _make_skip_aware(self.mandatory)
        self._skip = False

    @property
    def can_skip(self) -> bool:
        return len(self.skippable) > 0

    @property
    def skip(self) -> bool:
        return self._skip

    @skip.setter
    def skip(self, value: bool) -> None:
        if value and not self.can_skip:
            raise ValueError("this stage has no skippable sub-path")
        self._skip = bool(value)
        for module in self.mandatory.modules():
            if isinstance(module, SkipAwareBatchNorm2d):
                module.skipping = self._skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mandatory(x)
        return x if self._skip else self.skippable(x)


class AdaptiveBackbone(BlockBackbone):
    """A BlockBackbone of AdaptiveStages with a switchable depth configuration."""

    @property
    def stages(self) -> list[AdaptiveStage]:
        return list(self.blocks)  # type: ignore[arg-type]

    @property
    def skippable(self) -> list[int]:
        return [len(s.skippable) for s in self.stages]

    @property
    def depth(self) -> str:
        return "".join(SKIP if s.skip else FULL for s in self.stages)

    def set_depth(self, config: str) -> None:
        check_depth(config, self.block_names, self.skippable)
        for stage, letter in zip(self.stages, config):
            stage.skip = letter == SKIP

    def super_depth(self) -> str:
        return FULL * len(self.stages)

    def base_depth(self) -> str:
        return "".join(SKIP if n else FULL for n in self.skippable)

    def depth_configs(self) -> list[str]:
        """Every sub-network: 2^(stages that can skip), super-net first, base-net last."""
        choices = [(FULL, SKIP) if n else (FULL,) for n in self.skippable]
        return ["".join(c) for c in itertools.product(*choices)]

    def forward_stages(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """Logits and every stage's output (what skip-aware self-distillation compares)."""
        x = self.stem(x)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return self.head(x), features


def check_depth(config: str, names: Sequence[str], skippable: Sequence[int]) -> None:
    """The manifest's rule (edge.manifest.depth_problem), on the torch side."""
    problem = depth_problem(config, [(name, n > 0) for name, n in zip(names, skippable)])
    if problem:
        raise ValueError(problem)


def default_skippable(blocks_per_stage: Sequence[int]) -> list[int]:
    """The second half of every stage (the mandatory half gets the extra block)."""
    return [n // 2 for n in blocks_per_stage]


def make_adaptive(backbone: BlockBackbone, skippable: Sequence[int] | None = None) -> AdaptiveBackbone:
    """Regroup `backbone` (weights shared, not copied) into adaptive stages; `skippable[s]`
    trailing blocks of stage s can be skipped. Those blocks must keep the feature shape."""
    ends = sorted(backbone.stage_ends.values())
    if not ends or ends[-1] != len(backbone.blocks) - 1:
        raise ValueError("the backbone's stages must cover all its blocks")
    starts = [0] + [e + 1 for e in ends[:-1]]
    sizes = [e - s + 1 for s, e in zip(starts, ends)]
    skippable = list(skippable) if skippable is not None else default_skippable(sizes)
    if len(skippable) != len(sizes):
        raise ValueError(f"need one skippable count per stage ({len(sizes)}), got {len(skippable)}")
    info = backbone.feature_info()
    stages, names = [], []
    name_of = {end: name for name, end in backbone.stage_ends.items()}
    for start, end, n in zip(starts, ends, skippable):
        if not 0 <= n < end - start + 1:
            raise ValueError(f"stage {name_of[end]} has {end - start + 1} blocks: it can skip 0 to {end - start}, not {n}")
        first_skipped = end + 1 - n
        _check_shape_preserving(info, first_skipped, end, name_of[end])
        blocks = list(backbone.blocks[start : end + 1])
        stages.append(AdaptiveStage(blocks[: len(blocks) - n], blocks[len(blocks) - n :]))
        names.append(name_of[end])
    return AdaptiveBackbone(
        backbone.stem, stages, backbone.head, names, {name: i for i, name in enumerate(names)},
        backbone.input_shape, backbone.normalization,
    )


def _check_shape_preserving(info: Sequence[object], first: int, last: int, stage: str) -> None:
    shapes = [i.shape for i in info]  # type: ignore[attr-defined]
    for block in range(first, last + 1):
        if block == 0 or shapes[block] != shapes[block - 1]:
            raise ValueError(f"stage {stage}: block {block} changes the feature shape, so it cannot be skipped")


def _make_skip_aware(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SkipAwareBatchNorm2d(child))
        else:
            _make_skip_aware(child)
