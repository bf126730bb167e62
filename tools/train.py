"""train: a backbone the normal way (or take yours), then exit heads (frozen backbone or joint).

    edge-train --arch resnet20 --data fashion-mnist --out runs/r20 --exits frozen,joint
    edge-train --init runs/r20/static.pt --epochs 2 --lr 0.01 --out runs/r20-more --exits ''   # train on
    edge-train --source torchvision:resnet18 --weights mine.pt --input-shape 3,64,64 \
        --data folder:images --splits layer2,layer3 --out runs/mine --exits frozen,joint  # your network
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.train import TrainConfig, exit_accuracies, set_threads
from edge.errors import UserError
from engines.backbone import BlockBackbone
from engines.checkpoint import ModelSpec, load_checkpoint
from engines.registry import list_backbones
from tools._cli import run_main
from tools._source_args import add_source_args, source_kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-train", description=__doc__.splitlines()[0])
    add_source_args(p, default_source="resnet20")
    p.add_argument("--arch", dest="source", help="the same as --source (a zoo name: " + ", ".join(list_backbones()) + ")")
    p.add_argument("--init", type=Path, help="a backbone checkpoint (static.pt) to train on from (default: from scratch)")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--splits", default="layer1,layer2")
    p.add_argument("--exits", default="frozen", help="comma-separated: frozen, joint (empty: backbone only)")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=0)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--flip", action="store_true", help="random horizontal flips (not for digits or text)")
    p.add_argument("--seed", type=int, default=0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    train = load_dataset(args.data, "train", args.input_shape, crop=args.crop)
    test = load_dataset(args.data, "test", train.input_shape, train.classes, crop=args.crop)
    if args.train_samples:
        train = train.subset(slice(0, args.train_samples))
    cfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, flip=args.flip, shift=1, seed=args.seed)
    spec, init = _spec_and_init(args, train)
    if args.weights is not None:
        static = pipeline.imported_model(spec, args.weights, args.out / "static.pt")
        spec = dataclasses.replace(spec, weights_sha256=static_digest(args.out / "static.pt"))
        print(f"static (your weights, {args.weights}): test accuracy {exit_accuracies(static, test)[0]:.2%} -> {args.out / 'static.pt'}")
    else:
        static = pipeline.static_model(spec, train, cfg, args.out / "static.pt", init)
        print(f"static: test accuracy {exit_accuracies(static, test)[0]:.2%} -> {args.out / 'static.pt'}")
    for mode in filter(None, args.exits.split(",")):
        exit_spec = dataclasses.replace(spec, split_points=args.splits.split(","))
        net = pipeline.multi_exit_model(exit_spec, mode, train, cfg, args.out / f"{mode}.pt", static=static)
        accs = ", ".join(f"{a:.2%}" for a in exit_accuracies(net, test))
        print(f"{mode} exits: test accuracy per exit {accs} -> {args.out / f'{mode}.pt'}")
    return 0


def _spec_and_init(args: argparse.Namespace, train: Dataset) -> tuple[ModelSpec, BlockBackbone | None]:
    if args.init is None:
        return pipeline.backbone_spec(args.source, train, **source_kwargs(args)), None
    if args.weights is not None:
        raise UserError("give --init (a checkpoint of this project) or --weights (yours), not both")
    return pipeline.plain_checkpoint(args.init, train)


def static_digest(path: Path) -> str | None:
    return load_checkpoint(path)[0].weights_sha256


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
