"""train-adaptive: an adaptive-depth network by skip-aware self-distillation (seed 003).

    edge-train-adaptive --arch resnet32 --out runs/adaptive --epochs 2
    edge-train-adaptive --init runs/bench/resnet20/static.pt --out runs/adaptive   # fine-tune
    edge-train-adaptive --source torchvision:resnet18 --weights mine.pth --input-shape 3,64,64 \
        --data folder:images --out runs/mine-adn                                   # your network
    torchrun --nproc_per_node 2 -m tools.train_adaptive --out runs/adaptive      # DDP, gloo

Writes adaptive.pt (the backbone) and, with --exit-epochs > 0, adaptive-exits.pt (exit
heads after every stage but the last, trained on the frozen backbone at the super-net
and base-net depths), then prints the test accuracy of every depth configuration.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path
from typing import cast

from calibration import pipeline
from calibration.adaptive import SelfDistillation, depth_accuracies
from calibration.data import Dataset, load_dataset
from calibration.train import TrainConfig, exit_accuracies, set_threads
from edge.atomic import sha256_file
from edge.backends.onnxruntime_backend import online_cores
from edge.errors import UserError
from engines.adaptive import AdaptiveBackbone, depth_stages, make_adaptive
from engines.backbone import BlockBackbone
from engines.checkpoint import ModelSpec, load_checkpoint
from engines.registry import list_backbones
from tools._cli import run_main
from tools._source_args import add_source_args, source_kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-train-adaptive", description=__doc__.splitlines()[0])
    add_source_args(p, default_source="resnet20")
    p.add_argument("--arch", dest="source", help="the same as --source (a zoo name: " + ", ".join(list_backbones()) + ")")
    p.add_argument("--init", type=Path, help="a plain backbone checkpoint to fine-tune (default: --weights, else from scratch)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--skippable", help="blocks each stage can skip, comma-separated (default: half of each stage)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--exit-epochs", type=int, default=1, help="0: no exit heads")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the super-net's cross-entropy")
    p.add_argument("--outputs-only", action="store_true", help="distil predictions only, not stage outputs")
    p.add_argument("--train-samples", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    rank, world = _start_distributed()
    try:
        set_threads(max(1, online_cores() // world))
        train = _train_data(args)
        if args.train_samples:
            train = train.subset(slice(0, args.train_samples))
        spec, init = _spec_and_init(args, train)
        cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, shift=1, seed=args.seed, progress=rank == 0)
        distill = SelfDistillation(args.alpha, features=not args.outputs_only)
        backbone = pipeline.adaptive_model(spec, train, cfg, args.out / "adaptive.pt", init, distill, world > 1, save=rank == 0)
        if world > 1:  # replicas that stayed in step print the same fingerprint
            print(f"rank {rank}/{world}: weights {pipeline.weights_fingerprint(backbone)[:16]}", flush=True)
        if rank == 0:
            _finish(args, spec, backbone, train, cfg)
    finally:
        _stop_distributed(world)
    return 0


def _finish(args: argparse.Namespace, spec: ModelSpec, backbone: AdaptiveBackbone, train: Dataset, cfg: TrainConfig) -> None:
    test = load_dataset(args.data, "test", train.input_shape, train.classes, crop=args.crop)
    print(f"adaptive backbone -> {args.out / 'adaptive.pt'}")
    for depth, accuracy in depth_accuracies(backbone, test).items():
        print(f"  depth {depth}: test accuracy {accuracy:.2%}")
    if args.exit_epochs > 0:
        exit_cfg = TrainConfig(epochs=args.exit_epochs, batch_size=args.batch_size, lr=0.05, shift=1, seed=args.seed)
        net = pipeline.adaptive_exits(spec, backbone, train, exit_cfg, args.out / "adaptive-exits.pt")
        for depth in (backbone.super_depth(), backbone.base_depth()):
            cast(AdaptiveBackbone, net.backbone).set_depth(depth)
            accs = ", ".join(f"{a:.2%}" for a in exit_accuracies(net, test))
            print(f"  exits at depth {depth}: {accs} -> {args.out / 'adaptive-exits.pt'}")


def _train_data(args: argparse.Namespace) -> Dataset:
    """The training split, fitted to the --init checkpoint's input if there is one."""
    if args.init is None:
        return load_dataset(args.data, "train", args.input_shape, crop=args.crop)
    spec, _, _ = load_checkpoint(args.init)
    return load_dataset(args.data, "train", spec.input_shape, spec.classes, crop=args.crop)


def _spec_and_init(args: argparse.Namespace, train: Dataset) -> tuple[ModelSpec, BlockBackbone | None]:
    """The spec with its skippable counts, and the backbone to fine-tune (None: from scratch)."""
    if args.init is not None and args.weights is not None:
        raise UserError("give --init (a checkpoint of this project) or --weights (yours), not both")
    init: BlockBackbone | None
    if args.init is not None:
        spec, init = pipeline.plain_checkpoint(args.init, train)
    else:
        spec = pipeline.backbone_spec(args.source, train, **source_kwargs(args))
        init = spec.build_backbone(args.weights) if args.weights is not None else None
        if args.weights is not None:
            spec.weights_sha256 = sha256_file(args.weights)
    plain = copy.deepcopy(init) if init is not None else spec.build_backbone()  # make_adaptive makes its BNs skip-aware
    stages = len(depth_stages(plain))
    spec.skippable = _parse_counts(args.skippable, stages) if args.skippable else make_adaptive(plain).skippable
    return spec, init


def _parse_counts(text: str, stages: int) -> list[int]:
    try:
        counts = [int(c) for c in text.split(",")]
    except ValueError:
        raise UserError(f"--skippable must be integers separated by commas, got {text!r}") from None
    if len(counts) != stages:
        raise UserError(f"--skippable needs one count per stage ({stages}), got {len(counts)}")
    return counts


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


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
