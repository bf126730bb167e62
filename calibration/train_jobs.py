"""What `edge-train` and `edge-train-adaptive` run: a network from its source (or a
checkpoint to train on from), its static model, exit heads, or its adaptive-depth version
by skip-aware self-distillation (seed 003), with the test accuracies printed."""

from __future__ import annotations

import copy
import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from calibration import pipeline
from calibration.adaptive import SelfDistillation, depth_accuracies
from calibration.data import Dataset, load_dataset
from calibration.slimmable import Sandwich
from calibration.train import TrainConfig, exit_accuracies, set_threads
from edge.atomic import sha256_file
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError
from engines.adaptive import AdaptiveBackbone, depth_stages, make_adaptive
from engines.backbone import BlockBackbone
from engines.checkpoint import ModelSpec, load_checkpoint
from engines.slimmable import make_slimmable


@dataclass(frozen=True)
class Network:
    """Where the network comes from: a source with its arguments and weights, or `init`, a
    checkpoint of this project to train on from."""

    source: str = "resnet20"  # a zoo name, torchvision:<name>, timm:<name> or module:<package.module>:<factory>
    kwargs: dict[str, Any] = field(default_factory=dict)  # the source's own, with mean and std
    weights: Path | None = None  # your trained weights
    input_shape: tuple[int, int, int] | None = None  # None: the data's
    crop: bool = False
    init: Path | None = None


@dataclass(frozen=True)
class Training:
    """The flags both training tools share."""

    out: Path
    data: str = "fashion-mnist"
    epochs: int = 3
    train_samples: int = 0  # 0: all
    lr: float = 0.1
    batch_size: int = 128
    seed: int = 0


@dataclass(frozen=True)
class ExitsJob:
    network: Network
    training: Training
    splits: tuple[str, ...] = ("layer1", "layer2")
    exits: tuple[str, ...] = ("frozen",)  # frozen, joint; empty: the backbone only
    flip: bool = False  # random horizontal flips (not for digits or text)


@dataclass(frozen=True)
class AdaptiveJob:
    network: Network
    training: Training
    skippable: tuple[int, ...] | None = None  # blocks each stage can skip (None: half of each stage)
    exit_epochs: int = 1  # 0: no exit heads
    alpha: float = 0.5  # weight of the super-net's cross-entropy
    outputs_only: bool = False  # distil predictions only, not stage outputs
    width: float | None = None  # adaptive width instead of depth: the narrow stages' fraction of inner channels
    random_configs: int = 1  # adaptive width: mixed configurations per batch besides the widest and narrowest


def train_exits(job: ExitsJob) -> None:
    """The static model (trained, trained on from `init`, or your weights), then each kind
    of exit heads; checkpoints under `training.out`."""
    t, n = job.training, job.network
    set_threads()
    train = load_dataset(t.data, "train", n.input_shape, crop=n.crop)
    test = load_dataset(t.data, "test", train.input_shape, train.classes, crop=n.crop)
    if t.train_samples:
        train = train.subset(slice(0, t.train_samples))
    cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, flip=job.flip, shift=1, seed=t.seed)
    spec, init = _spec_and_init(n, train)
    if n.weights is not None:
        static = pipeline.imported_model(spec, n.weights, t.out / "static.pt")
        spec = dataclasses.replace(spec, weights_sha256=load_checkpoint(t.out / "static.pt")[0].weights_sha256)
        print(f"static (your weights, {n.weights}): test accuracy {exit_accuracies(static, test)[0]:.2%} -> {t.out / 'static.pt'}")
    else:
        static = pipeline.static_model(spec, train, cfg, t.out / "static.pt", init)
        print(f"static: test accuracy {exit_accuracies(static, test)[0]:.2%} -> {t.out / 'static.pt'}")
    for mode in job.exits:
        exit_spec = dataclasses.replace(spec, split_points=list(job.splits))
        net = pipeline.multi_exit_model(exit_spec, mode, train, cfg, t.out / f"{mode}.pt", static=static)
        accs = ", ".join(f"{a:.2%}" for a in exit_accuracies(net, test))
        print(f"{mode} exits: test accuracy per exit {accs} -> {t.out / f'{mode}.pt'}")


def _spec_and_init(n: Network, train: Dataset) -> tuple[ModelSpec, BlockBackbone | None]:
    if n.init is None:
        return pipeline.backbone_spec(n.source, train, **n.kwargs), None
    if n.weights is not None:
        raise UserError("give --init (a checkpoint of this project) or --weights (yours), not both")
    return pipeline.plain_checkpoint(n.init, train)


def train_adaptive(job: AdaptiveJob) -> None:
    """The adaptive-depth backbone (adaptive.pt) and, with `exit_epochs`, its exit heads at
    the super- and base-net depths (adaptive-exits.pt); under torchrun, one process per
    rank on gloo, rank 0 saving."""
    t = job.training
    rank, world = _start_distributed()
    try:
        set_threads(max(1, online_cores() // world))
        train = _train_data(job.network, t.data)
        if t.train_samples:
            train = train.subset(slice(0, t.train_samples))
        spec, init = _adaptive_spec_and_init(job, train)
        cfg = TrainConfig(epochs=t.epochs, batch_size=t.batch_size, lr=t.lr, shift=1, seed=t.seed, progress=rank == 0)
        if job.width is not None:
            if world > 1:
                raise UserError("adaptive width trains on one process (no torchrun)")
            backbone = pipeline.slimmable_model(spec, train, cfg, t.out / "adaptive.pt", init, Sandwich(job.random_configs))
        else:
            distill = SelfDistillation(job.alpha, features=not job.outputs_only)
            backbone = pipeline.adaptive_model(spec, train, cfg, t.out / "adaptive.pt", init, distill, world > 1, save=rank == 0)
        if world > 1:  # replicas that stayed in step print the same fingerprint
            print(f"rank {rank}/{world}: weights {pipeline.weights_fingerprint(backbone)[:16]}", flush=True)
        if rank == 0:
            _finish(job, spec, backbone, train)
    finally:
        _stop_distributed(world)


def _finish(job: AdaptiveJob, spec: ModelSpec, backbone: AdaptiveBackbone, train: Dataset) -> None:
    t = job.training
    test = load_dataset(t.data, "test", train.input_shape, train.classes, crop=job.network.crop)
    print(f"adaptive backbone -> {t.out / 'adaptive.pt'}")
    noun = "depth" if backbone.variant_kind == "depth" else "widths"
    for depth, accuracy in depth_accuracies(backbone, test).items():
        print(f"  {noun} {depth}: test accuracy {accuracy:.2%}")
    if job.exit_epochs > 0:
        exit_cfg = TrainConfig(epochs=job.exit_epochs, batch_size=t.batch_size, lr=0.05, shift=1, seed=t.seed)
        net = pipeline.adaptive_exits(spec, backbone, train, exit_cfg, t.out / "adaptive-exits.pt")
        for depth in (backbone.super_depth(), backbone.base_depth()):
            cast(AdaptiveBackbone, net.backbone).set_depth(depth)
            accs = ", ".join(f"{a:.2%}" for a in exit_accuracies(net, test))
            print(f"  exits at {noun} {depth}: {accs} -> {t.out / 'adaptive-exits.pt'}")


def _train_data(n: Network, data: str) -> Dataset:
    """The training split, fitted to the --init checkpoint's input if there is one."""
    if n.init is None:
        return load_dataset(data, "train", n.input_shape, crop=n.crop)
    spec, _, _ = load_checkpoint(n.init)
    return load_dataset(data, "train", spec.input_shape, spec.classes, crop=n.crop)


def _adaptive_spec_and_init(job: AdaptiveJob, train: Dataset) -> tuple[ModelSpec, BlockBackbone | None]:
    """The spec with its skippable counts, and the backbone to fine-tune (None: from scratch)."""
    n = job.network
    if n.init is not None and n.weights is not None:
        raise UserError("give --init (a checkpoint of this project) or --weights (yours), not both")
    init: BlockBackbone | None
    if n.init is not None:
        spec, init = pipeline.plain_checkpoint(n.init, train)
    else:
        spec = pipeline.backbone_spec(n.source, train, **n.kwargs)
        init = spec.build_backbone(n.weights) if n.weights is not None else None
        if n.weights is not None:
            spec.weights_sha256 = sha256_file(n.weights)
    plain = copy.deepcopy(init) if init is not None else spec.build_backbone()  # make_adaptive makes its BNs skip-aware
    if job.width is not None:
        if job.skippable is not None:
            raise UserError("give --skippable (adaptive depth) or --width (adaptive width), not both")
        make_slimmable(plain, job.width)  # refuses a network that cannot narrow, with the reason
        spec.width = job.width
        return spec, init
    stages = len(depth_stages(plain))
    if job.skippable is not None and len(job.skippable) != stages:
        raise UserError(f"--skippable needs one count per stage ({stages}), got {len(job.skippable)}")
    spec.skippable = list(job.skippable) if job.skippable is not None else make_adaptive(plain).skippable
    return spec, init


def _start_distributed() -> tuple[int, int]:
    """(rank, world size): torchrun sets WORLD_SIZE; gloo runs on the CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return 0, 1
    import torch.distributed as dist

    dist.init_process_group("gloo")
    return dist.get_rank(), world


def _stop_distributed(world: int) -> None:
    if world > 1:
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()
