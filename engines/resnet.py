"""CIFAR-style ResNets (He et al. 2016, section 4.2) for any input channels and size."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from engines.backbone import BlockBackbone, Normalize


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with a residual connection (1x1 projection when shapes change)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def cifar_resnet(
    depth: int,
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (1, 28, 28),
    widths: Sequence[int] = (16, 32, 64),
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BlockBackbone:
    """ResNet-(6n+2): three stages of n basic blocks, e.g. depth 8, 20, 56."""
    if (depth - 2) % 6 != 0 or depth < 8:
        raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
    blocks_per_stage = (depth - 2) // 6
    channels = input_shape[0]
    mean = list(mean) if mean is not None else [0.5] * channels
    std = list(std) if std is not None else [0.25] * channels
    stem = nn.Sequential(
        Normalize(mean, std),
        nn.Conv2d(channels, widths[0], 3, 1, 1, bias=False),
        nn.BatchNorm2d(widths[0]),
        nn.ReLU(inplace=True),
    )
    blocks: list[nn.Module] = []
    names: list[str] = []
    stage_ends: dict[str, int] = {}
    in_ch = widths[0]
    for stage, width in enumerate(widths):
        for i in range(blocks_per_stage):
            stride = 2 if stage > 0 and i == 0 else 1
            blocks.append(BasicBlock(in_ch, width, stride))
            names.append(f"layer{stage + 1}.{i}")
            in_ch = width
        stage_ends[f"layer{stage + 1}"] = len(blocks) - 1
    head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_ch, num_classes))
    net = BlockBackbone(stem, blocks, head, names, stage_ends, input_shape, {"mean": mean, "std": std})
    _init_weights(net)
    return net


def _init_weights(net: nn.Module) -> None:
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
