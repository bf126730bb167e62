"""edge-train-adaptive: an adaptive-depth network by skip-aware self-distillation (seed 003;
calibration.train_jobs), or with --width an adaptive-width one by the sandwich rule.

    edge-train-adaptive --arch resnet32 --out runs/adaptive --epochs 2
    edge-train-adaptive --init runs/bench/resnet20/static.pt --out runs/adaptive   # fine-tune
    edge-train-adaptive --arch resnet20 --width 0.25 --out runs/slim               # wide and narrow stages
    edge-train-adaptive --source torchvision:resnet18 --weights mine.pth --input-shape 3,64,64 \
        --data folder:images --out runs/mine-adn                                   # your network
    torchrun --nproc_per_node 2 -m tools.train_adaptive --out runs/adaptive      # DDP, gloo

Writes adaptive.pt (the backbone) and, with --exit-epochs > 0, adaptive-exits.pt (exit
heads after every stage but the last, trained on the frozen backbone at the super-net
and base-net depths), then prints the test accuracy of every depth configuration.
"""

from __future__ import annotations

import argparse

from calibration.train_jobs import AdaptiveJob, train_adaptive
from edge.errors import UserError
from tools._cli import run_main
from tools._source_args import add_training_args, network_and_training


def parse_args(argv: list[str] | None) -> AdaptiveJob:
    p = argparse.ArgumentParser(prog="edge-train-adaptive", description=__doc__.splitlines()[0])
    add_training_args(p, epochs=2, lr=0.05, init_help="a plain backbone checkpoint to fine-tune (default: --weights, else from scratch)")
    p.add_argument("--skippable", help="blocks each stage can skip, comma-separated (default: half of each stage)")
    p.add_argument("--width", type=float, help="adaptive width instead of depth: each stage also runs at this fraction of its blocks' "
                   "inner channels (e.g. 0.25), trained by the sandwich rule with in-place distillation")
    p.add_argument("--random-configs", type=int, default=1, help="--width: mixed stage widths trained per batch besides the widest and narrowest")
    p.add_argument("--exit-epochs", type=int, default=1, help="0: no exit heads")
    p.add_argument("--alpha", type=float, default=0.5, help="weight of the super-net's cross-entropy")
    p.add_argument("--outputs-only", action="store_true", help="distil predictions only, not stage outputs")
    args = p.parse_args(argv)
    network, training = network_and_training(args)
    return AdaptiveJob(network, training, _counts(args.skippable), args.exit_epochs, args.alpha, args.outputs_only, args.width, args.random_configs)


def _counts(text: str | None) -> tuple[int, ...] | None:
    if not text:
        return None
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise UserError(f"--skippable must be integers separated by commas, got {text!r}") from None


def main(argv: list[str] | None = None) -> int:
    train_adaptive(parse_args(argv))
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":  # torchrun -m tools.train_adaptive
    raise SystemExit(cli())
