"""Steps shared by the quickstart and the benchmark: train (or reuse a checkpoint),
build engines, pick entropy thresholds on a calibration split."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

from calibration.adaptive import SelfDistillation, train_adaptive
from calibration.data import Dataset
from calibration.exits import ExitTable, choose_uniform_threshold, exit_table
from calibration.slimmable import Sandwich, train_slimmable
from calibration.train import Distillation, TrainConfig, train_backbone, train_exits_frozen, train_joint
from edge.atomic import sha256_file
from edge.errors import UserError
from edge.manifest import MANIFEST_NAME, Manifest, OperatingPoint, load_manifest, save_manifest
from engines.adaptive import AdaptiveBackbone, make_adaptive
from engines.backbone import BlockBackbone
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from engines.heads import HeadSpec
from engines.partition import MultiExitNetwork
from engines.slimmable import make_slimmable

log = logging.getLogger(__name__)

EXIT_MODES = ("frozen", "joint")


def backbone_spec(arch: str, data: Dataset, **kwargs: object) -> ModelSpec:
    return ModelSpec(arch, {"input_shape": list(data.input_shape), **kwargs}, list(data.classes))


def plain_checkpoint(path: Path, data: Dataset) -> tuple[ModelSpec, BlockBackbone]:
    """A plain backbone checkpoint (what edge-train writes as static.pt), checked against
    the data it will train on or be compared on."""
    spec, model, _ = load_checkpoint(path)
    if spec.split_points or spec.skippable is not None or spec.width is not None or not isinstance(model, BlockBackbone):
        raise UserError(f"{path}: not a plain backbone checkpoint (edge-train writes one as static.pt)")
    if spec.classes != list(data.classes) or list(spec.backbone_kwargs["input_shape"]) != list(data.input_shape):
        raise UserError(
            f"{path}: a backbone for {len(spec.classes)} classes of shape {tuple(spec.backbone_kwargs['input_shape'])}"
            f" does not fit {data.name} ({len(data.classes)} classes of shape {tuple(data.input_shape)})"
        )
    return spec, model


def static_model(
    spec: ModelSpec, data: Dataset, cfg: TrainConfig, path: Path, init: BlockBackbone | None = None,
) -> BlockBackbone:
    """The backbone trained the normal way, from scratch or on from `init` (a backbone of
    the same architecture); reuses `path` if it holds a matching checkpoint."""
    recipe = _recipe(cfg, "static", init)
    reused = _reusable(path, spec, recipe, cfg.epochs)
    if reused is not None:
        return reused  # type: ignore[return-value]
    backbone = copy.deepcopy(init) if init is not None else spec.build_backbone()
    train_backbone(backbone, data, cfg, on_epoch=_saver(path, spec, backbone, recipe))
    return backbone


def imported_model(spec: ModelSpec, weights: Path, path: Path) -> BlockBackbone:
    """The user's own trained network as the static model: built from `weights` (their
    state_dict file), checkpointed to `path` with the weights' digest in its spec."""
    backbone = spec.build_backbone(weights)
    digest = sha256_file(Path(weights))
    save_checkpoint(path, dataclasses.replace(spec, weights_sha256=digest), backbone, {"mode": "imported", "weights": str(weights)})
    return backbone


def multi_exit_model(
    spec: ModelSpec,
    mode: str,
    data: Dataset,
    cfg: TrainConfig,
    path: Path,
    static: BlockBackbone | None = None,
    exit_weights: Sequence[float] | None = None,
    distill: Distillation | None = None,
) -> MultiExitNetwork:
    """Exit heads on the trained `static` backbone: frozen (heads only), or joint (heads
    and backbone fine-tuned together). Joint without a backbone trains from scratch."""
    if mode not in EXIT_MODES:
        raise ValueError(f"exit training must be one of {EXIT_MODES}, got {mode!r}")
    if mode == "frozen" and static is None:
        raise ValueError("frozen exits need the trained static backbone")
    # Heads are only valid on the very backbone they started from.
    recipe = _recipe(cfg, mode, static)
    if distill is not None:  # only when used: older checkpoints keep matching their recipe
        recipe["distill"] = dataclasses.asdict(distill)
    if exit_weights is not None:
        recipe["exit_weights"] = [float(w) for w in exit_weights]
    reused = _reusable(path, spec, recipe, cfg.epochs)
    if reused is not None:
        return reused  # type: ignore[return-value]
    backbone = copy.deepcopy(static) if static is not None else spec.build_backbone()
    net = MultiExitNetwork(backbone, spec.split_points, HeadSpec.from_dict(spec.head))
    if mode == "frozen":
        train_exits_frozen(net, data, cfg, on_epoch=_saver(path, spec, net, recipe), distill=distill)
    else:
        train_joint(net, data, cfg, exit_weights, on_epoch=_saver(path, spec, net, recipe), distill=distill)
    return net


def adaptive_model(
    spec: ModelSpec,
    data: Dataset,
    cfg: TrainConfig,
    path: Path,
    init: BlockBackbone | None = None,
    distill: SelfDistillation = SelfDistillation(),
    distributed: bool = False,
    save: bool = True,
) -> AdaptiveBackbone:
    """An adaptive-depth backbone trained by skip-aware self-distillation, from scratch or
    fine-tuning `init` (a plain backbone of the same architecture, trained the normal
    way). `spec.skippable` says how many blocks each stage can skip. Under torchrun only
    one rank should `save`."""
    if spec.skippable is None:
        raise ValueError("an adaptive model's spec needs skippable counts per stage")
    recipe = _recipe(cfg, "adaptive", init) | {"distill": dataclasses.asdict(distill)}
    if distributed:
        import torch.distributed as dist

        recipe["world"] = dist.get_world_size()
    # Under torchrun a rank deciding alone to reuse a file (that others may not see)
    # would leave the rest waiting in DDP's first broadcast: there it always trains.
    reused = None if distributed else _reusable(path, spec, recipe, cfg.epochs)
    if reused is not None:
        return reused  # type: ignore[return-value]
    plain = copy.deepcopy(init) if init is not None else spec.build_backbone()
    backbone = plain if isinstance(plain, AdaptiveBackbone) else make_adaptive(plain, spec.skippable)
    saver = _saver(path, spec, backbone, recipe) if save else None
    train_adaptive(backbone, data, cfg, distill, on_epoch=saver, distributed=distributed)
    return backbone


def slimmable_model(
    spec: ModelSpec, data: Dataset, cfg: TrainConfig, path: Path, init: BlockBackbone | None = None, sandwich: Sandwich = Sandwich(),
) -> AdaptiveBackbone:
    """A network of wide and narrow stages trained by the sandwich rule, from scratch or
    on from `init` (a plain backbone of the same architecture). `spec.width` is the
    narrow stages' fraction of their blocks' inner channels."""
    if spec.width is None:
        raise ValueError("a slimmable model's spec needs its narrow width")
    recipe = _recipe(cfg, "slimmable", init) | {"sandwich": dataclasses.asdict(sandwich)}
    reused = _reusable(path, spec, recipe, cfg.epochs)
    if reused is not None:
        return reused  # type: ignore[return-value]
    plain = copy.deepcopy(init) if init is not None else spec.build_backbone()
    backbone = plain if isinstance(plain, AdaptiveBackbone) else make_slimmable(plain, spec.width)
    train_slimmable(backbone, data, cfg, sandwich, on_epoch=_saver(path, spec, backbone, recipe))
    return backbone


def adaptive_exits(
    spec: ModelSpec, backbone: AdaptiveBackbone, data: Dataset, cfg: TrainConfig, path: Path,
    head: HeadSpec = HeadSpec(), distill: Distillation | None = None,
) -> MultiExitNetwork:
    """Exit heads after every stage but the last, on the frozen adaptive backbone, each
    batch seen through the super-net and the base-net so the heads serve every depth."""
    exit_spec = dataclasses.replace(spec, split_points=list(backbone.block_names[:-1]), head=head.to_dict())
    recipe = _recipe(cfg, "frozen-adaptive", backbone)
    if distill is not None:  # only when used: older checkpoints keep matching their recipe
        recipe["distill"] = dataclasses.asdict(distill)
    reused = _reusable(path, exit_spec, recipe, cfg.epochs)
    if reused is not None:
        return reused  # type: ignore[return-value]
    net = MultiExitNetwork(copy.deepcopy(backbone), exit_spec.split_points, head)
    depths = [backbone.super_depth(), backbone.base_depth()]
    train_exits_frozen(net, data, cfg, on_epoch=_saver(path, exit_spec, net, recipe), depths=depths, distill=distill)
    return net


def _recipe(cfg: TrainConfig, mode: str, backbone: torch.nn.Module | None = None) -> dict[str, object]:
    recipe: dict[str, object] = {"train": {k: v for k, v in dataclasses.asdict(cfg).items() if k != "progress"}, "mode": mode}
    if backbone is not None:
        recipe["backbone_sha256"] = weights_fingerprint(backbone)
    return recipe


def weights_fingerprint(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def _saver(path: Path, spec: ModelSpec, model: torch.nn.Module, recipe: dict[str, object]) -> Callable[[int], None]:
    """Checkpoint after every epoch, recording how far training got."""
    return lambda epoch: save_checkpoint(path, spec, model, recipe | {"epochs_done": epoch + 1})


def _reusable(path: Path, spec: ModelSpec, recipe: dict[str, object], epochs: int) -> torch.nn.Module | None:
    """A finished checkpoint of exactly this model and training recipe, if `path` holds one."""
    if not path.is_file():
        return None
    saved, model, meta = load_checkpoint(path)
    if saved != spec or meta != recipe | {"epochs_done": epochs}:
        log.info("%s is from another model or recipe (or unfinished): training again", path)
        return None
    log.info("reusing %s", path)
    return model


def build(net: MultiExitNetwork, data: Dataset, out_dir: Path, name: str, static: BlockBackbone | None = None) -> Manifest:
    return build_engines(
        net, out_dir, data.classes, data.images[:16], options=BuildOptions(name=name), static_backbone=static,
    )


def with_points(manifest: Manifest, points: Sequence[OperatingPoint], default: str | None = None) -> Manifest:
    """Rewrite the manifest with a new operating-point table (engines unchanged)."""
    updated = dataclasses.replace(
        manifest, operating_points=list(points), default_operating_point=default or points[0].name,
    )
    save_manifest(updated, manifest.root / MANIFEST_NAME)
    return load_manifest(manifest.root)


def entropy_point(name: str, threshold: float | None, num_exits: int, measured: dict[str, object] | None = None) -> OperatingPoint:
    return OperatingPoint(name, [threshold] * (num_exits - 1), measured=dict(measured or {}))


def pick_threshold(net: MultiExitNetwork, calibration: Dataset, segment_ms: Sequence[float], max_drop: float) -> tuple[float | None, ExitTable]:
    table = exit_table(net, calibration)
    candidates = [round(0.01 * i, 3) for i in range(1, 200)]
    return choose_uniform_threshold(table, max_drop, candidates, segment_ms), table
