"""Exit heads: an optional small conv, pooling, an optional hidden layer, a classifier."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from torch import nn


@dataclass(frozen=True)
class HeadSpec:
    """Shape of every exit head. Defaults give the plain pool + linear head of seed 000."""

    conv_channels: int = 0  # > 0 adds conv3x3-BN-ReLU before pooling (stronger early exits)
    pool: str = "avg"  # "avg" or "max"
    hidden: int = 0  # > 0 adds a hidden linear layer with ReLU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "HeadSpec":
        return cls(**data)


def exit_head(in_channels: int, num_classes: int, spec: HeadSpec) -> nn.Sequential:
    layers: list[nn.Module] = []
    channels = in_channels
    if spec.conv_channels > 0:
        layers += [
            nn.Conv2d(channels, spec.conv_channels, 3, 1, 1, bias=False),
            nn.BatchNorm2d(spec.conv_channels),
            nn.ReLU(inplace=True),
        ]
        channels = spec.conv_channels
    if spec.pool not in ("avg", "max"):
        raise ValueError(f"exit head pool must be 'avg' or 'max', got {spec.pool!r}")
    layers += [nn.AdaptiveAvgPool2d(1) if spec.pool == "avg" else nn.AdaptiveMaxPool2d(1), nn.Flatten()]
    if spec.hidden > 0:
        layers += [nn.Linear(channels, spec.hidden), nn.ReLU(inplace=True)]
        channels = spec.hidden
    layers.append(nn.Linear(channels, num_classes))
    return nn.Sequential(*layers)
