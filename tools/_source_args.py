"""Command-line options the training tools share: the network (its source, arguments,
weights, input, or a checkpoint to train on from) and the training run."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from calibration.train_jobs import Network, Training


def add_source_args(parser: argparse.ArgumentParser, default_source: str | None = None) -> None:
    parser.add_argument("--source", default=default_source, required=default_source is None,
                        help="a zoo name (resnet20, ...), torchvision:<name>, timm:<name> or module:<package.module>:<factory>")
    parser.add_argument("--kwargs", type=json_object, default={}, metavar="JSON",
                        help='keyword arguments for the source, e.g. \'{"image_size": 64}\'')
    parser.add_argument("--weights", type=Path, default=None,
                        help="your trained weights: a state_dict file, or a checkpoint with one under state_dict/model/model_state_dict")
    parser.add_argument("--input-shape", type=shape, default=None, metavar="C,H,W",
                        help="the network's input (default: the data's); images are resized and converted to it")
    parser.add_argument("--crop", action="store_true", help="resize to cover the input shape and centre-crop (default: stretch)")
    parser.add_argument("--mean", type=floats, default=None, help="per-channel normalization baked into the graph (default: ImageNet's for RGB)")
    parser.add_argument("--std", type=floats, default=None)


def source_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The source's own keyword arguments with the normalization, as ModelSpec keeps them."""
    kwargs = dict(args.kwargs)
    if (args.mean is None) != (args.std is None):
        raise argparse.ArgumentTypeError("give --mean and --std together")
    if args.mean is not None:
        kwargs.update(mean=args.mean, std=args.std)
    return kwargs


def json_object(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("expected a JSON object of keyword arguments")
    return value


def shape(text: str) -> tuple[int, int, int]:
    try:
        dims = tuple(int(d) for d in text.replace("x", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected C,H,W") from None
    if len(dims) != 3 or min(dims) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: expected three positive sizes C,H,W")
    return dims[0], dims[1], dims[2]


def floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated numbers") from None


def add_training_args(parser: argparse.ArgumentParser, epochs: int, lr: float, init_help: str) -> None:
    """The source, --arch (its zoo-name alias), --init, and the run's own flags."""
    from engines.registry import list_backbones

    add_source_args(parser, default_source="resnet20")
    parser.add_argument("--arch", dest="source", help="the same as --source (a zoo name: " + ", ".join(list_backbones()) + ")")
    parser.add_argument("--init", type=Path, help=init_help)
    parser.add_argument("--data", default="fashion-mnist")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--epochs", type=int, default=epochs)
    parser.add_argument("--train-samples", type=int, default=0)
    parser.add_argument("--lr", type=float, default=lr)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--seed", type=int, default=0)


def network_and_training(args: argparse.Namespace) -> tuple[Network, Training]:
    network = Network(args.source, source_kwargs(args), args.weights, args.input_shape, args.crop, args.init)
    return network, Training(args.out, args.data, args.epochs, args.train_samples, args.lr, args.batch_size, args.seed)
