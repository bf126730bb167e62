"""A user's own networks, as a user would write them (used by the intake tests and benchmark)."""

from __future__ import annotations

import torch
from torch import nn


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(out)))


class TinyResNet(nn.Module):
    """Stem, two stages of residual blocks, a pooled linear classifier."""

    def __init__(self, num_classes: int = 10, width: int = 8) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU())
        self.stage1 = nn.Sequential(Residual(width), Residual(width))
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.stage2 = nn.Sequential(Residual(2 * width), Residual(2 * width))
        self.fc = nn.Linear(2 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage2(self.down(self.stage1(self.stem(x))))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


class DataDependent(TinyResNet):
    """Branches on the data: torch.fx cannot trace it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        if x.mean() > 0:
            x = self.stage1(x)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(self.stage2(self.down(x)), 1), 1))
