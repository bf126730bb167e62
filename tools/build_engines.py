"""build-engines: checkpoint -> one ONNX per segment (checked against torch) -> manifest.

    edge-build-engines runs/quickstart/multi_exit.pt --out engines/ --data fashion-mnist \
        --point balanced=0.3,0.3
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.data import load_dataset
from edge.errors import UserError
from edge.manifest import OperatingPoint
from engines.build import BuildOptions, build_engines
from engines.checkpoint import load_checkpoint
from engines.partition import MultiExitNetwork
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-build-engines", description=__doc__.splitlines()[0])
    p.add_argument("checkpoint", type=Path, help="a multi-exit checkpoint written by edge-train or the quickstart")
    p.add_argument("--out", type=Path, required=True, help="folder for the engines and manifest.json")
    p.add_argument("--data", default="fashion-mnist", help="real inputs to check the export on")
    p.add_argument("--name", default=None, help="model name in the manifest (default: the checkpoint's stem)")
    p.add_argument("--point", action="append", default=[], metavar="NAME=T1,T2,..",
                   help="an entropy operating point: one threshold per early exit, 'none' = never exit there")
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--static", type=Path, default=None, help="a plain-backbone checkpoint to export as static.onnx for comparison")
    return p.parse_args(argv)


def parse_point(text: str, early_exits: int) -> OperatingPoint:
    name, sep, values = text.partition("=")
    if not sep or not name:
        raise UserError(f"--point {text!r}: expected NAME=T1,T2,...")
    try:
        thresholds = [None if v.strip().lower() == "none" else float(v) for v in values.split(",")]
    except ValueError:
        raise UserError(f"--point {text!r}: thresholds must be numbers or 'none'") from None
    if len(thresholds) != early_exits:
        raise UserError(f"--point {text!r}: the network has {early_exits} early exits, got {len(thresholds)} thresholds")
    return OperatingPoint(name, thresholds)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    spec, net, _ = load_checkpoint(args.checkpoint)
    if not isinstance(net, MultiExitNetwork):
        raise UserError(f"{args.checkpoint}: a plain backbone has no exits; train exits first (edge-train --exits ...)")
    static = load_checkpoint(args.static)[1] if args.static else None
    data = load_dataset(args.data, "test", spec.input_shape, spec.classes)
    if data.input_shape != tuple(net.backbone.input_shape):
        raise UserError(f"{args.data} images are {data.input_shape}, the network takes {tuple(net.backbone.input_shape)}")
    full = OperatingPoint("full", [None] * (net.num_exits - 1))
    points = [full] + [parse_point(p, net.num_exits - 1) for p in args.point]
    options = BuildOptions(name=args.name or args.checkpoint.stem, max_batch=args.max_batch)
    manifest = build_engines(net, args.out, data.classes, data.images[:16], points, options, static)
    print(f"wrote {len(manifest.segments)} segments and {args.out / 'manifest.json'}")
    return 0


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
