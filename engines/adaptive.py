"""Adaptive depth (seed 003): every residual stage = a mandatory sub-path + a skippable one.

`make_adaptive` regroups a BlockBackbone's blocks by stage (the zoo's, or a traced
network's nn.Sequential stages: torchvision's `layer1`..`layer4`). The first blocks of
a stage are mandatory; its last blocks, residual and shape-keeping, form the skippable
sub-path. Every BN layer in the
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
import operator
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import fx, nn

from edge.errors import UserError
from edge.manifest import FULL, SKIP, depth_problem
from engines.backbone import BlockBackbone, FeatureInfo


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


class StageVariants(Protocol):
    """What an adaptive backbone asks of a stage: whether it has a base variant, which
    variant runs (`skip`: the base one), and over how many blocks the variants differ."""

    kind: str  # "depth": the base variant leaves blocks out; "width": it runs them narrow
    skip: bool

    @property
    def can_skip(self) -> bool: ...

    @property
    def variant_blocks(self) -> int: ...

    def __call__(self, x: torch.Tensor) -> torch.Tensor: ...


class AdaptiveStage(nn.Module):
    """mandatory -> (skippable unless skipped). With nothing skippable it is a plain stage."""

    kind = "depth"

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
    def variant_blocks(self) -> int:
        return len(self.skippable)

    @property
    def skip(self) -> bool:
        return self._skip

    @skip.setter
    def skip(self, value: bool) -> None:
        if value and not self.can_skip:
            raise AdaptiveDepthError("this stage has no skippable sub-path")
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
    def stages(self) -> list[StageVariants]:
        return list(self.blocks)  # type: ignore[arg-type]

    @property
    def skippable(self) -> list[int]:
        """Per stage, the blocks its base variant changes (0: it has none)."""
        return [s.variant_blocks for s in self.stages]

    @property
    def variant_kind(self) -> str:
        """"depth" (base variants leave blocks out) or "width" (they run narrow)."""
        return "width" if any(s.kind == "width" for s in self.stages) else "depth"

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
        raise AdaptiveDepthError(problem)


@dataclass(frozen=True)
class DepthStage:
    """A stage adaptive depth regroups by: blocks `first`..`last` of the backbone."""

    name: str
    first: int
    last: int

    @property
    def size(self) -> int:
        return self.last - self.first + 1


def depth_stages(backbone: BlockBackbone, info: Sequence[FeatureInfo] | None = None) -> list[DepthStage]:
    """The stages adaptive depth regroups by, in order. A traced network's stages nest
    (ConvNeXt's `features` holds `features.1`, an MBConv holds its `block`): a stage is
    kept unless it holds a stage that can skip, or it cannot skip and lies in another."""
    info = backbone.feature_info() if info is None else info
    spans = {(backbone.stage_starts[n], end): n for n, end in sorted(backbone.stage_ends.items(), key=lambda i: i[1], reverse=True)}
    stages = [DepthStage(name, first, last) for (first, last), name in spans.items()]
    skips = {s: _default_skip(backbone, info, s) > 0 for s in stages}
    inside = {s: [o for o in stages if o != s and s.first <= o.first and o.last <= s.last] for s in stages}
    outer = {s: [o for o in stages if s in inside[o]] for s in stages}
    kept = [s for s in stages if not any(skips[o] for o in inside[s]) and (skips[s] or not outer[s])]
    return sorted(kept, key=lambda s: s.first)


def make_adaptive(backbone: BlockBackbone, skippable: Sequence[int] | None = None) -> AdaptiveBackbone:
    """Regroup `backbone` (weights shared, not copied) into adaptive stages; `skippable[s]`
    trailing blocks of stage s can be skipped (default: half the stage, as far as its
    last blocks are residual and keep the feature shape). Blocks before the first stage
    join the stem, blocks between stages lead the next one, blocks after the last join
    the head. A network with no stage that can skip is refused with the reason."""
    info = backbone.feature_info()
    stages = depth_stages(backbone, info)
    if not stages:
        raise AdaptiveDepthError("adaptive depth needs stages (an nn.Sequential of two or more blocks) and the network has none")
    if skippable is None:
        skippable = [_default_skip(backbone, info, s) for s in stages]
        if not any(skippable):
            reasons = "; ".join(_why_fixed(backbone, info, s) for s in stages)
            raise AdaptiveDepthError(f"adaptive depth does not apply: no stage ends in residual blocks that keep the feature shape ({reasons})")
    skippable = list(skippable)
    if len(skippable) != len(stages):
        raise AdaptiveDepthError(f"need one skippable count per stage ({len(stages)}), got {len(skippable)}")
    blocks = list(backbone.blocks)
    groups = []
    for k, (stage, n) in enumerate(zip(stages, skippable)):
        if not 0 <= n < stage.size:
            raise AdaptiveDepthError(f"stage {stage.name} has {stage.size} blocks: it can skip 0 to {stage.size - 1}, not {n}")
        for block in range(stage.last + 1 - n, stage.last + 1):
            problem = _skip_problem(backbone, info, block)
            if problem:
                raise AdaptiveDepthError(f"stage {stage.name}: block {block} ({backbone.block_names[block]}) {problem}, so it cannot be skipped")
        members = stage_members(blocks, stages, k)
        groups.append(AdaptiveStage(members[: len(members) - n], members[len(members) - n :]))
    return regrouped(backbone, stages, groups)


def stage_members(blocks: Sequence[nn.Module], stages: Sequence[DepthStage], k: int) -> list[nn.Module]:
    """The blocks stage k takes: those after the previous stage, up to its own last."""
    lead = stages[k - 1].last + 1 if k else stages[k].first
    return list(blocks[lead : stages[k].last + 1])


def regrouped(backbone: BlockBackbone, stages: Sequence[DepthStage], groups: Sequence[nn.Module]) -> AdaptiveBackbone:
    """An AdaptiveBackbone of `groups`, one module per stage: blocks before the first
    stage join the stem, blocks after the last join the head."""
    blocks = list(backbone.blocks)
    first, last = stages[0].first, stages[-1].last
    stem = nn.Sequential(backbone.stem, *blocks[:first]) if first else backbone.stem
    head = nn.Sequential(*blocks[last + 1 :], backbone.head) if last < len(blocks) - 1 else backbone.head
    names = [s.name for s in stages]
    return AdaptiveBackbone(stem, groups, head, names, {name: i for i, name in enumerate(names)},
                            backbone.input_shape, backbone.normalization)


class AdaptiveDepthError(UserError, ValueError):
    """A network (or a choice of skippable blocks) adaptive depth cannot use, and why."""


def _default_skip(backbone: BlockBackbone, info: Sequence[FeatureInfo], stage: DepthStage) -> int:
    """Half the stage's blocks, as far as its last blocks can be skipped."""
    n = 0
    while n < stage.size // 2 and not _skip_problem(backbone, info, stage.last - n):
        n += 1
    return n


def _why_fixed(backbone: BlockBackbone, info: Sequence[FeatureInfo], stage: DepthStage) -> str:
    if stage.size < 2:
        return f"{stage.name} has one block"
    return f"{stage.name} ends in {backbone.block_names[stage.last]}, which {_skip_problem(backbone, info, stage.last)}"


def _skip_problem(backbone: BlockBackbone, info: Sequence[FeatureInfo], block: int) -> str | None:
    """Why a block cannot be left out, or None: without it the next block must get
    what it would have got, and a residual block's input already carries its meaning."""
    if block == 0 or info[block].shape != info[block - 1].shape:
        return "changes the feature shape"
    if not _has_identity_path(backbone.blocks[block]):
        return "is not a residual block (no x + f(x))"
    return None


_ADDS = {operator.add, operator.iadd, torch.add, "add", "add_"}


def _has_identity_path(block: nn.Module) -> bool:
    """A traced block shows in its graph whether its input is added to its output; the
    zoo's stage blocks are residual by construction."""
    if not isinstance(block, fx.GraphModule):
        return True
    inputs = {n for n in block.graph.nodes if n.op == "placeholder"}
    return any(
        n.op in ("call_function", "call_method") and n.target in _ADDS and any(a in inputs for a in n.args)
        for n in block.graph.nodes
    )


def _make_skip_aware(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.BatchNorm2d):
            setattr(module, name, SkipAwareBatchNorm2d(child))
        else:
            _make_skip_aware(child)


def adaptive_depth_summary(backbone: BlockBackbone) -> dict[str, Any]:
    """The stages adaptive depth would use and what each can skip, or why it does not
    apply (`{"refused": reason}`); the backbone itself is left as it is."""
    try:
        adaptive = make_adaptive(copy.deepcopy(backbone))  # it makes the BNs it regroups skip-aware
    except AdaptiveDepthError as exc:
        return {"refused": str(exc)}
    return {"stages": adaptive.block_names, "skippable": adaptive.skippable}

