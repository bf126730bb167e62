"""Adaptive width (slimmable networks; seed 000's next step): every block of a stage can
run at a fraction of its inner channels.

A residual block conv1 -> bn1 -> relu -> conv2 -> bn2 (+ shortcut) keeps the width of
its input and output, so only the channels between conv1 and conv2 narrow: conv1 makes
the first k of its output channels, conv2 reads only those, and each BN keeps a second
set of parameters and statistics for the narrow pass (switchable BN, as in slimmable
networks: the statistics of a narrow pass differ from the wide one's). The stage's
interface stays the same at either width, so every combination of stage widths chains.

`make_slimmable` regroups a BlockBackbone by stage, like adaptive depth, into an
AdaptiveBackbone whose stages are NarrowStages: `set_depth("FTF")` runs stage 1 narrow
(T), the others at full width, and the exported base variant of a stage is its narrow
pass, a dense engine of its own (the sliced weights are constants of the graph).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from engines.adaptive import AdaptiveBackbone, AdaptiveDepthError, depth_stages, regrouped, stage_members
from engines.backbone import BlockBackbone

NARROW_PARTS = ("conv1", "bn1", "conv2", "bn2")  # what a block needs to narrow (the zoo's and torchvision's BasicBlock)


class NarrowConv2d(nn.Module):
    """A convolution that keeps only its first `keep` output (or input) channels when narrow."""

    def __init__(self, conv: nn.Conv2d, keep: int, side: str) -> None:
        super().__init__()
        self.conv = conv
        self.keep = keep
        self.side = side  # "out" (conv1) or "in" (conv2)
        self.narrow = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        c = self.conv
        if not self.narrow:
            return c(x)
        weight = c.weight[: self.keep] if self.side == "out" else c.weight[:, : self.keep]
        bias = c.bias[: self.keep] if c.bias is not None and self.side == "out" else c.bias
        return F.conv2d(x, weight, bias, c.stride, c.padding, c.dilation, c.groups)

    def dense(self) -> nn.Conv2d:
        """The convolution this is at its present width, as a layer of its own."""
        if not self.narrow:
            return self.conv
        c = self.conv
        keep_out, keep_in = (self.keep, c.in_channels) if self.side == "out" else (c.out_channels, self.keep)
        conv = copy.deepcopy(c)
        conv.in_channels, conv.out_channels = keep_in, keep_out
        conv.weight = nn.Parameter(c.weight[:keep_out, :keep_in].detach().clone())
        if c.bias is not None:
            conv.bias = nn.Parameter(c.bias[:keep_out].detach().clone())
        return conv.train(self.training)


class SwitchableBatchNorm2d(nn.Module):
    """One BN for the full pass, one (of `narrow_features`) for the narrow pass."""

    def __init__(self, bn: nn.BatchNorm2d, narrow_features: int) -> None:
        super().__init__()
        self.full = bn
        self.slim = nn.BatchNorm2d(narrow_features, bn.eps, bn.momentum, bn.affine, bn.track_running_stats)
        with torch.no_grad():  # start from the wide BN's first channels
            for name in ("weight", "bias", "running_mean", "running_var"):
                source = getattr(bn, name)
                if source is not None:
                    getattr(self.slim, name).copy_(source[:narrow_features])
        self.narrow = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.slim(x) if self.narrow else self.full(x)

    def dense(self) -> nn.BatchNorm2d:
        return self.slim if self.narrow else self.full


class NarrowStage(nn.Module):
    """A stage whose blocks all run narrow when `skip` is set (the stage's base variant)."""

    kind = "width"

    def __init__(self, blocks: Sequence[nn.Module], width: float) -> None:
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        for block in self.blocks:
            _narrow_block(block, width)
        self._skip = False

    @property
    def can_skip(self) -> bool:
        return True

    @property
    def variant_blocks(self) -> int:
        return len(self.blocks)

    @property
    def skip(self) -> bool:
        return self._skip

    @skip.setter
    def skip(self, value: bool) -> None:
        self._skip = bool(value)
        for module in self.blocks.modules():
            if isinstance(module, (NarrowConv2d, SwitchableBatchNorm2d)):
                module.narrow = self._skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


def make_slimmable(backbone: BlockBackbone, width: float) -> AdaptiveBackbone:
    """Regroup `backbone` (weights shared) into stages whose blocks can run at `width`
    (0 < width < 1) of their inner channels. A network whose stage blocks are not
    conv1-bn1-conv2-bn2 residual blocks is refused with the reason."""
    if not 0.0 < width < 1.0:
        raise AdaptiveDepthError(f"a narrow width is a fraction of the channels, 0 < width < 1, got {width}")
    stages = depth_stages(backbone)
    if not stages:
        raise AdaptiveDepthError("adaptive width needs stages (an nn.Sequential of two or more blocks) and the network has none")
    blocks = list(backbone.blocks)
    for stage in stages:
        for index in range(stage.first, stage.last + 1):
            problem = narrow_problem(blocks[index])
            if problem:
                raise AdaptiveDepthError(f"stage {stage.name}: block {index} ({backbone.block_names[index]}) {problem}, so it cannot run narrow")
    groups = [NarrowStage(stage_members(blocks, stages, k), width) for k in range(len(stages))]
    return regrouped(backbone, stages, groups)


def narrow_problem(block: nn.Module) -> str | None:
    """Why a block cannot run narrow, or None."""
    parts = {name: getattr(block, name, None) for name in NARROW_PARTS}
    if not all(isinstance(parts[n], nn.Conv2d) for n in ("conv1", "conv2")) or not all(isinstance(parts[n], nn.BatchNorm2d) for n in ("bn1", "bn2")):
        return "is not a conv1-bn1-conv2-bn2 residual block"
    conv1, conv2 = parts["conv1"], parts["conv2"]
    assert isinstance(conv1, nn.Conv2d) and isinstance(conv2, nn.Conv2d)
    if conv1.groups != 1 or conv2.groups != 1:
        return "has grouped convolutions"
    if conv1.out_channels < 2:
        return "has one inner channel"
    return None


def narrow_channels(channels: int, width: float) -> int:
    return max(1, min(channels - 1, round(channels * width)))


def _narrow_block(block: nn.Module, width: float) -> None:
    conv1: nn.Conv2d = block.conv1  # type: ignore[assignment]
    keep = narrow_channels(conv1.out_channels, width)
    block.conv1 = NarrowConv2d(conv1, keep, "out")
    block.conv2 = NarrowConv2d(block.conv2, keep, "in")  # type: ignore[arg-type]
    block.bn1 = SwitchableBatchNorm2d(block.bn1, keep)  # type: ignore[arg-type]
    bn2: nn.BatchNorm2d = block.bn2  # type: ignore[assignment]
    block.bn2 = SwitchableBatchNorm2d(bn2, bn2.num_features)


def dense_copy(module: nn.Module) -> nn.Module:
    """A copy of `module` with every narrow-capable part replaced by the plain layer it
    is at its present width: a narrow convolution by a convolution of the sliced
    weights. Exported, a narrow stage is then a dense graph of the smaller layers
    (slices of a weight would stay in the graph as Slice nodes and keep the BN unfused)."""
    copied = copy.deepcopy(module)
    for parent in list(copied.modules()):
        for name, child in list(parent.named_children()):
            if isinstance(child, (NarrowConv2d, SwitchableBatchNorm2d)):
                setattr(parent, name, child.dense())
    return copied
