"""Checkpoints that rebuild their network: architecture spec + weights, written atomically."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from edge.atomic import atomic_path
from edge.errors import UserError
from engines.adaptive import make_adaptive
from engines.backbone import BlockBackbone
from engines.heads import HeadSpec
from engines.intake.sources import build_backbone
from engines.partition import MultiExitNetwork
from engines.slimmable import make_slimmable

FORMAT = 1


@dataclass
class ModelSpec:
    """Everything needed to rebuild a (multi-exit) network before loading its weights.

    `backbone` is the network's source (engines.intake.sources: a zoo name,
    `torchvision:<name>`, `timm:<name>` or `module:<package.module>:<factory>`);
    `backbone_kwargs` holds its input_shape, the normalization (mean, std) and the
    source's own keyword arguments; `weights_sha256` names the user's weights file the
    network started from (the weights themselves are in the checkpoint)."""

    backbone: str
    backbone_kwargs: dict[str, Any]
    classes: list[str]
    split_points: list[int | str] = field(default_factory=list)  # empty: a plain backbone
    head: dict[str, Any] = field(default_factory=dict)
    skippable: list[int] | None = None  # adaptive depth: skippable blocks per stage; None = plain
    width: float | None = None  # adaptive width: a stage's narrow variant keeps this fraction of its blocks' inner channels
    weights_sha256: str | None = None

    @property
    def input_shape(self) -> tuple[int, int, int]:
        c, h, w = self.backbone_kwargs["input_shape"]
        return int(c), int(h), int(w)

    def build_backbone(self, weights: Path | None = None) -> BlockBackbone:
        """The network, from `weights` (the user's state_dict file) if given, else random."""
        kwargs = {k: v for k, v in self.backbone_kwargs.items() if k != "input_shape"}
        backbone = build_backbone(self.backbone, len(self.classes), self.input_shape, kwargs, weights)
        if self.width is not None:
            return make_slimmable(backbone, self.width)
        return backbone if self.skippable is None else make_adaptive(backbone, self.skippable)

    def build(self) -> MultiExitNetwork | BlockBackbone:
        backbone = self.build_backbone()
        if not self.split_points:
            return backbone
        return MultiExitNetwork(backbone, self.split_points, HeadSpec.from_dict(self.head))


def save_checkpoint(path: Path, spec: ModelSpec, model: torch.nn.Module, meta: dict[str, Any] | None = None) -> None:
    payload = {"format": FORMAT, "spec": vars(spec), "state_dict": model.state_dict(), "meta": meta or {}}
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(path: Path) -> tuple[ModelSpec, torch.nn.Module, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many kinds for a bad file
        raise UserError(f"{path}: not a readable checkpoint ({type(exc).__name__}: {exc})") from exc
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise UserError(f"{path}: not a checkpoint of this project (format {FORMAT} expected)")
    try:
        spec = ModelSpec(**payload["spec"])
        model = spec.build()
        model.load_state_dict(payload["state_dict"])
    except UserError as exc:
        raise UserError(f"{path}: {exc}") from exc
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise UserError(f"{path}: checkpoint does not describe a network this project builds ({type(exc).__name__}: {exc})") from exc
    return spec, model.eval(), payload.get("meta", {})
