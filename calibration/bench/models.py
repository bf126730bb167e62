"""The benchmark's models: how each is trained (static network, exit heads after every
candidate block, the adaptive-depth version), and the splits each sees."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from calibration import pipeline
from calibration.data import Dataset, fit_images
from calibration.train import Distillation, TrainConfig
from engines.adaptive import make_adaptive
from engines.backbone import BlockBackbone
from engines.heads import HeadSpec
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class ModelRecipe:
    """How one benchmark model is trained: the static network as far as this machine
    allows, then exit heads after every candidate block."""

    source: str
    epochs: int  # the static network's
    train_samples: int = 0  # 0: the whole training pool (the training split less the calibration split)
    input_shape: tuple[int, int, int] | None = None  # None: the data's own
    exit_samples: int = 0  # 0: as train_samples
    test_samples: int = 0  # 0: the whole test split
    adaptive_lr: float = 0.0  # > 0: with --depth-frontier, an adaptive-depth version too (seed 003), from scratch for the same epochs at this lr
    kwargs: dict[str, Any] = field(default_factory=dict)

MODELS = {
    # the ResNet-20 class: about 0.4 ms per image at batch 1 on 2 cores
    # lr 0.2 for the adaptive version: Algorithm 1 weighs the super-net's cross-entropy by 0.5
    "resnet20": ModelRecipe("resnet20", epochs=8, adaptive_lr=0.2),
    # the larger: 27 blocks, about 1.2 ms
    "resnet56": ModelRecipe("resnet56", epochs=4, train_samples=40000, exit_samples=20000),
    # realistic compute: torchvision's ResNet-18 at its standard stem, Fashion-MNIST at 3x96x96
    "tv_resnet18-96": ModelRecipe(
        "torchvision:resnet18", epochs=2, train_samples=40000, input_shape=(3, 96, 96), exit_samples=15000, test_samples=5000,
    ),
}

DISTILL = Distillation(weight=0.5, temperature=3.0)


@dataclass(frozen=True)
class ExitRecipe:
    """How exit heads are trained: on the frozen backbone, distilled from the final exit,
    so the final exit stays the static model. Joint fine-tuning was measured too and cost
    the final exit 1.2-3.2 points (docs/bench.md): not kept."""

    head: HeadSpec
    epochs: int

EXIT_RECIPES = {
    "frozen": ExitRecipe(HeadSpec(), epochs=1),  # seed 000's pool + linear head
    # a conv3x3-BN-ReLU (32 channels) at stride 2 before pooling: on resnet20 as accurate as
    # at stride 1 (docs/bench.md) for a quarter of the head's cost; 4 epochs: +6 points at
    # the first exit over 1
    "frozen-conv-s2": ExitRecipe(HeadSpec(conv_channels=32, conv_stride=2), epochs=4),
}

# the adaptive-depth version's exit heads (after layer1 and layer2), and their checkpoint's name
ADAPTIVE_EXITS = ("frozen-conv", ExitRecipe(HeadSpec(conv_channels=32), epochs=4))
FIXED_EXITS = ["layer1", "layer2"]
FIXED_MEASURED = "frozen-conv-s2"  # the recipe whose fixed set is built and measured too (all are predicted)


@dataclass
class ModelData:
    train: Dataset
    exit_train: Dataset
    calibration: Dataset
    test: Dataset

def model_data(recipe: ModelRecipe, pool: Dataset, calibration: Dataset, test: Dataset) -> ModelData:
    """The model's splits, resized to its input shape (only the images it uses). Pool
    images the model does not train on join the calibration split: thresholds held to a
    0.5-point target need more than 5000 images to hold on the test split."""
    train = pool.subset(slice(0, recipe.train_samples or len(pool)))
    exit_train = train.subset(slice(0, recipe.exit_samples or len(train)))
    unused = pool.subset(slice(len(train), None))
    calibration = dataclasses.replace(
        calibration, images=np.concatenate([calibration.images, unused.images]), labels=np.concatenate([calibration.labels, unused.labels]),
    )
    test = test.subset(slice(0, recipe.test_samples or len(test)))
    parts = [train, exit_train, calibration, test]
    if recipe.input_shape is not None and tuple(recipe.input_shape) != train.input_shape:
        parts = [dataclasses.replace(d, images=fit_images(d.images, recipe.input_shape)) for d in parts]
        parts[1] = parts[0].subset(slice(0, len(exit_train)))  # a view, not a second copy
    return ModelData(*parts)

def candidate_exits(backbone: BlockBackbone) -> list[int | str]:
    """Every block inside a stage, the last one excepted (its exit is the final one)."""
    inside: list[int | str] = [n for n in backbone.block_names if any(n.startswith(f"{stage}.") for stage in backbone.stage_starts)]
    return inside[:-1]

def train_model(recipe: ModelRecipe, data: ModelData, out: Path) -> tuple[BlockBackbone, dict[str, MultiExitNetwork]]:
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.source, data.train, **recipe.kwargs)
    static = pipeline.static_model(spec, data.train, cfg, out / "static.pt")
    exit_spec = dataclasses.replace(spec, split_points=candidate_exits(static))
    nets = {}
    for name, exits in EXIT_RECIPES.items():
        head_spec = dataclasses.replace(exit_spec, head=exits.head.to_dict() if exits.head != HeadSpec() else {})
        nets[name] = pipeline.multi_exit_model(
            head_spec, "frozen", data.exit_train, dataclasses.replace(cfg, epochs=exits.epochs), out / f"{name}.pt",
            static=static, distill=DISTILL,
        )
    return static, nets

def train_adaptive(recipe: ModelRecipe, data: ModelData, out: Path) -> MultiExitNetwork:
    """The same network with skippable sub-paths, trained from scratch by skip-aware
    self-distillation for the static network's epochs, then exit heads after every stage
    but the last on the frozen backbone, serving every depth."""
    cfg = TrainConfig(epochs=recipe.epochs, flip=True, shift=1)
    spec = pipeline.backbone_spec(recipe.source, data.train, **recipe.kwargs)
    spec = dataclasses.replace(spec, skippable=make_adaptive(spec.build_backbone()).skippable)
    backbone = pipeline.adaptive_model(spec, data.train, dataclasses.replace(cfg, lr=recipe.adaptive_lr), out / "adaptive.pt")
    label, exits = ADAPTIVE_EXITS
    return pipeline.adaptive_exits(
        spec, backbone, data.exit_train, dataclasses.replace(cfg, epochs=exits.epochs), out / f"adaptive-{label}.pt",
        head=exits.head, distill=DISTILL,
    )
