"""Exit heads sized from the features they read: a feature map (C, H, W), a token
sequence (T, D) from a transformer, or a vector (D,). Each ends in a linear classifier.

  feature map  optional conv3x3-BN-ReLU (stride 1 or 2), global pooling, optional hidden layer
  tokens       the class token (first) or the mean of all tokens, LayerNorm, optional hidden layer
  vector       optional hidden layer
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    """Shape of every exit head. Defaults give the plain pool + linear head of seed 000."""

    conv_channels: int = 0  # > 0 adds conv3x3-BN-ReLU before pooling (stronger early exits)
    conv_stride: int = 1  # 2: the conv reads every other position, a quarter of its cost
    pool: str = "avg"  # feature maps: "avg" or "max"
    hidden: int = 0  # > 0 adds a hidden linear layer with ReLU
    tokens: str = "cls"  # token sequences: "cls" (the first token) or "mean"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if self.conv_stride == 1:  # as written before strides existed: older checkpoints keep matching
            del data["conv_stride"]
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> HeadSpec:
        return cls(**data)


class TokenPool(nn.Module):
    """(N, T, D) -> (N, D): the class token, or the mean over tokens."""

    def __init__(self, how: str) -> None:
        super().__init__()
        if how not in ("cls", "mean"):
            raise ValueError(f"exit head tokens must be 'cls' or 'mean', got {how!r}")
        self.how = how

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] if self.how == "cls" else x.mean(dim=1)


def exit_head(features: int | Sequence[int], num_classes: int, spec: HeadSpec) -> nn.Sequential:
    """A head for features of shape `features` (without the batch); an int is the
    channel count of a feature map."""
    shape = (features, 1, 1) if isinstance(features, int) else tuple(features)
    if len(shape) == 3:
        layers, width = _map_layers(shape[0], spec)
    elif len(shape) == 2:
        layers, width = [TokenPool(spec.tokens), nn.LayerNorm(shape[1])], shape[1]
    elif len(shape) == 1:
        layers, width = [], shape[0]
    else:
        raise ValueError(f"no exit head for features of shape {shape}: expected (C, H, W), (T, D) or (D,)")
    if spec.hidden > 0:
        layers += [nn.Linear(width, spec.hidden), nn.ReLU(inplace=True)]
        width = spec.hidden
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def _map_layers(channels: int, spec: HeadSpec) -> tuple[list[nn.Module], int]:
    layers: list[nn.Module] = []
    if spec.conv_channels > 0:
        layers += [
            nn.Conv2d(channels, spec.conv_channels, 3, spec.conv_stride, 1, bias=False),
            nn.BatchNorm2d(spec.conv_channels),
            nn.ReLU(inplace=True),
        ]
        channels = spec.conv_channels
    if spec.pool not in ("avg", "max"):
        raise ValueError(f"exit head pool must be 'avg' or 'max', got {spec.pool!r}")
    layers += [nn.AdaptiveAvgPool2d(1) if spec.pool == "avg" else nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    return layers, channels
