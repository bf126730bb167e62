"""The form every backbone takes for partitioning: stem -> blocks -> classifier head.

Split points are block indices; `feature_info` reports the shape after every block
so exit heads can be sized without knowing the architecture (timm's feature_info idea).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def default_normalization(channels: int) -> dict[str, list[float]]:
    """The normalization every source defaults to: torchvision's ImageNet statistics for
    RGB; mid-grey otherwise."""
    if channels == 3:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    return {"mean": [0.5] * channels, "std": [0.25] * channels}


class Normalize(nn.Module):
    """Per-channel (x - mean) / std inside the graph, so engines take images in [0, 1]."""

    mean: torch.Tensor
    std: torch.Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean)).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std)).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


@dataclass(frozen=True)
class FeatureInfo:
    """What comes out of one block: where exits can be attached. `shape` is without
    the batch: (C, H, W) for a feature map, (T, D) for tokens, (D,) for a vector."""

    index: int
    name: str
    shape: tuple[int, ...]

    @property
    def channels(self) -> int:
        return self.shape[0]

    @property
    def height(self) -> int:
        return self.shape[1]

    @property
    def width(self) -> int:
        return self.shape[2]


class BlockBackbone(nn.Module):
    """A classifier written as `head(blocks[-1](...blocks[0](stem(x))))`.

    `block_names` name each block (e.g. "layer2.1"); `stage_ends` maps a stage name
    to the index of its last block so split points can be given per stage, and
    `stage_starts` to its first (default: right after the stage before); `aliases`
    maps other names of a block's output (a traced network's module paths and node
    names) to its index, and `refusals` says why a name is not a place to split.
    """

    def __init__(
        self,
        stem: nn.Module,
        blocks: Sequence[nn.Module],
        head: nn.Module,
        block_names: Sequence[str],
        stage_ends: dict[str, int],
        input_shape: tuple[int, ...],
        normalization: dict[str, list[float]],
        aliases: dict[str, int] | None = None,
        refusals: dict[str, str] | None = None,
        stage_starts: dict[str, int] | None = None,
    ) -> None:
        super().__init__()
        if len(blocks) != len(block_names):
            raise ValueError("every block needs a name")
        self.stem = stem
        self.blocks = nn.ModuleList(blocks)
        self.head = head
        self.block_names = list(block_names)
        self.stage_ends = dict(stage_ends)
        self.stage_starts = dict(stage_starts) if stage_starts is not None else _contiguous_starts(stage_ends)
        self.input_shape = tuple(input_shape)
        self.normalization = normalization
        self.aliases = dict(aliases or {})
        self.refusals = dict(refusals or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)

    @torch.no_grad()
    def feature_info(self) -> list[FeatureInfo]:
        """Shapes after each block, traced once with a dummy input."""
        was_training = self.training
        self.eval()
        x = self.stem(torch.zeros(1, *self.input_shape))
        infos = []
        for i, (name, block) in enumerate(zip(self.block_names, self.blocks)):
            x = block(x)
            infos.append(FeatureInfo(i, name, tuple(x.shape[1:])))
        self.train(was_training)
        return infos

    def resolve_split(self, point: int | str) -> int:
        """A split point as a block index: an int, a block name or a stage name."""
        if isinstance(point, int):
            index = point if point >= 0 else len(self.blocks) + point
        elif point in self.stage_ends:
            index = self.stage_ends[point]
        elif point in self.block_names:
            index = self.block_names.index(point)
        elif point in self.aliases:
            index = self.aliases[point]
        elif point in self.refusals:
            raise ValueError(f"split point {point!r} is not a clean cut: {self.refusals[point]}")
        else:
            known = list(self.stage_ends) + self.block_names
            more = f", ... ({len(known) - 40} more)" if len(known) > 40 else ""
            raise ValueError(f"unknown split point {point!r}; known: {', '.join(known[:40])}{more}")
        if not 0 <= index < len(self.blocks) - 1:
            raise ValueError(
                f"split point {point!r} must be after a block before the last one "
                f"(0..{len(self.blocks) - 2}); the last block feeds the final classifier"
            )
        return index


def _contiguous_starts(stage_ends: dict[str, int]) -> dict[str, int]:
    """Each stage starting right after the one before (the zoo's stages cover every block)."""
    ordered = sorted(stage_ends.items(), key=lambda item: item[1])
    return {name: (ordered[k - 1][1] + 1 if k else 0) for k, (name, _) in enumerate(ordered)}
