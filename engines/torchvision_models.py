"""torchvision ResNet and MobileNetV2 as BlockBackbones (needs the `vision` extra).

For small inputs (e.g. 28x28) the stem's stride and max-pool are dropped, the usual
CIFAR adaptation, so the last stage still has a spatial map to pool.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from edge.deps import require
from engines.backbone import BlockBackbone, Normalize, default_normalization


def _normalization(channels: int, mean: Sequence[float] | None, std: Sequence[float] | None) -> dict[str, list[float]]:
    if mean is None or std is None:
        return default_normalization(channels)
    return {"mean": list(mean), "std": list(std)}


def torchvision_resnet(
    arch: str = "resnet18",
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    small_input: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BlockBackbone:
    models = require("torchvision.models", "vision", "torchvision backbones")
    net = getattr(models, arch)(weights=None, num_classes=num_classes)
    channels, height, _ = input_shape
    small = height < 96 if small_input is None else small_input
    if small or channels != 3:
        kernel, stride, pad = (3, 1, 1) if small else (7, 2, 3)
        net.conv1 = nn.Conv2d(channels, 64, kernel, stride, pad, bias=False)
    if small:
        net.maxpool = nn.Identity()
    norm = _normalization(channels, mean, std)
    stem = nn.Sequential(Normalize(norm["mean"], norm["std"]), net.conv1, net.bn1, net.relu, net.maxpool)
    blocks, names, stage_ends = [], [], {}
    for stage in range(1, 5):
        for i, block in enumerate(getattr(net, f"layer{stage}")):
            blocks.append(block)
            names.append(f"layer{stage}.{i}")
        stage_ends[f"layer{stage}"] = len(blocks) - 1
    head = nn.Sequential(net.avgpool, nn.Flatten(), net.fc)
    return BlockBackbone(stem, blocks, head, names, stage_ends, input_shape, norm)


def torchvision_mobilenet_v2(
    num_classes: int = 10,
    input_shape: tuple[int, int, int] = (3, 224, 224),
    small_input: bool | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BlockBackbone:
    models = require("torchvision.models", "vision", "torchvision backbones")
    net = models.mobilenet_v2(weights=None, num_classes=num_classes)
    channels, height, _ = input_shape
    small = height < 96 if small_input is None else small_input
    first = net.features[0][0]
    if small or channels != 3:
        net.features[0][0] = nn.Conv2d(channels, first.out_channels, 3, 1 if small else 2, 1, bias=False)
    norm = _normalization(channels, mean, std)
    stem = nn.Sequential(Normalize(norm["mean"], norm["std"]), net.features[0])
    inverted = list(net.features[1:-1])
    names = [f"features.{i + 1}" for i in range(len(inverted))]
    # torchvision's stage boundaries: where the channel count changes.
    stage_ends: dict[str, int] = {}
    for i, block in enumerate(inverted):
        nxt = inverted[i + 1] if i + 1 < len(inverted) else None
        if nxt is None or nxt.out_channels != block.out_channels:
            stage_ends[f"stage{len(stage_ends) + 1}"] = i
    head = nn.Sequential(net.features[-1], nn.AdaptiveAvgPool2d(1), nn.Flatten(), net.classifier)
    return BlockBackbone(stem, inverted, head, names, stage_ends, input_shape, norm)
