"""Partition a BlockBackbone at declared split points into segments with exit heads.

Segment k runs the blocks after split k-1 up to and including split k (segment 0 also
runs the stem) and feeds exit head k; the last segment runs the remaining blocks and
the backbone's own classifier. The segments reuse the backbone's modules, so running
them in order is the backbone, operation for operation.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

import torch
from torch import nn

from engines.backbone import BlockBackbone
from engines.heads import HeadSpec, exit_head


class Segment(nn.Module):
    """One separately exported piece: features in -> (features out, exit logits)."""

    def __init__(self, body: nn.Module, exit_head: nn.Module, is_final: bool) -> None:
        super().__init__()
        self.body = body
        self.exit_head = exit_head
        self.is_final = is_final

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        if self.is_final:
            # The final classifier consumes the features: nothing flows on.
            return features, features
        return features, self.exit_head(features)


class MultiExitNetwork(nn.Module):
    """A backbone with exit heads after `split_points`; the last exit is the backbone's own."""

    def __init__(
        self,
        backbone: BlockBackbone,
        split_points: Sequence[int | str],
        head_spec: HeadSpec = HeadSpec(),
        num_classes: int | None = None,
    ) -> None:
        super().__init__()
        splits = [backbone.resolve_split(p) for p in split_points]
        if splits != sorted(set(splits)) or not splits:
            raise ValueError(f"split points must be distinct and increasing, got {list(split_points)}")
        self.backbone = backbone
        self.splits = splits
        self.head_spec = head_spec
        info = backbone.feature_info()
        classes = num_classes or _num_classes(backbone)
        self.exit_heads = nn.ModuleList(exit_head(info[s].shape, classes, head_spec) for s in splits)
        self.segments = nn.ModuleList(self._build_segments())

    @property
    def segment_list(self) -> list[Segment]:
        """The segments, typed (an nn.ModuleList hands out plain Modules)."""
        return [cast(Segment, s) for s in self.segments]

    @property
    def num_exits(self) -> int:
        return len(self.splits) + 1

    def exit_names(self) -> list[str]:
        return [self.backbone.block_names[s] for s in self.splits] + ["final"]

    def _build_segments(self) -> list[Segment]:
        segments = []
        start = 0
        ends = self.splits + [len(self.backbone.blocks) - 1]
        for k, end in enumerate(ends):
            parts: list[nn.Module] = [self.backbone.stem] if k == 0 else []
            parts += list(self.backbone.blocks[start : end + 1])
            is_final = k == len(self.splits)
            if is_final:
                parts.append(self.backbone.head)
            head = nn.Identity() if is_final else self.exit_heads[k]
            segments.append(Segment(nn.Sequential(*parts), head, is_final))
            start = end + 1
        return segments

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Logits of every exit, in order (training and evaluation)."""
        logits = []
        for segment in self.segments:
            x, out = segment(x)
            logits.append(out)
        return logits

    def with_exits(self, chosen: Sequence[int]) -> MultiExitNetwork:
        """This network with only the early exits `chosen` (indices, increasing): the same
        backbone and the same heads, shared, not copied."""
        if not chosen:
            raise ValueError("a multi-exit network needs at least one early exit; without, it is the backbone")
        heads = [self.exit_heads[i] for i in chosen]
        net = MultiExitNetwork(self.backbone, [self.splits[i] for i in chosen], self.head_spec, _head_classes(heads[0]))
        net.exit_heads = nn.ModuleList(heads)
        net.segments = nn.ModuleList(net._build_segments())
        return net

    def backbone_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def head_parameters(self) -> list[nn.Parameter]:
        return list(self.exit_heads.parameters())


def _head_classes(head: nn.Module) -> int:
    return [m for m in head.modules() if isinstance(m, nn.Linear)][-1].out_features


def _num_classes(backbone: BlockBackbone) -> int:
    linears = [m for m in backbone.head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError("cannot infer the number of classes: pass num_classes")
    return linears[-1].out_features
