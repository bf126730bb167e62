"""edge-train: a backbone the normal way (or take yours), then exit heads (frozen backbone or
joint) (calibration.train_jobs).

    edge-train --arch resnet20 --data fashion-mnist --out runs/r20 --exits frozen,joint
    edge-train --init runs/r20/static.pt --epochs 2 --lr 0.01 --out runs/r20-more --exits ''   # train on
    edge-train --source torchvision:resnet18 --weights mine.pt --input-shape 3,64,64 \
        --data folder:images --splits layer2,layer3 --out runs/mine --exits frozen,joint  # your network
"""

from __future__ import annotations

import argparse

from calibration.train_jobs import ExitsJob, train_exits
from tools._cli import run_main
from tools._source_args import add_training_args, network_and_training


def parse_args(argv: list[str] | None) -> ExitsJob:
    p = argparse.ArgumentParser(prog="edge-train", description=__doc__.splitlines()[0])
    add_training_args(p, epochs=3, lr=0.1, init_help="a backbone checkpoint (static.pt) to train on from (default: from scratch)")
    p.add_argument("--splits", default="layer1,layer2")
    p.add_argument("--exits", default="frozen", help="comma-separated: frozen, joint (empty: backbone only)")
    p.add_argument("--flip", action="store_true", help="random horizontal flips (not for digits or text)")
    args = p.parse_args(argv)
    network, training = network_and_training(args)
    return ExitsJob(network, training, tuple(args.splits.split(",")), tuple(filter(None, args.exits.split(","))), args.flip)


def main(argv: list[str] | None = None) -> int:
    train_exits(parse_args(argv))
    return 0


def cli() -> int:
    return run_main(main)
