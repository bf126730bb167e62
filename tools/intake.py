"""intake: list a network's cut points with the measured latency share of each prefix,
propose split points, and check a cut (the chained segments against the network).

    edge-intake --source torchvision:resnet50 --input-shape 3,224,224
    edge-intake --source torchvision:resnet18 --weights mine.pt --num-classes 10 --input-shape 3,64,64 --splits layer2,layer3
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from edge.atomic import atomic_path
from edge.errors import UserError
from engines.adaptive import adaptive_depth_summary
from engines.backbone import BlockBackbone
from engines.intake.check import TOLERANCE, check_chain
from engines.intake.cuts import CutPoint, measure_cut_points, propose_splits
from engines.intake.sources import Source, build_backbone, traced_network
from tools._cli import run_main
from tools._source_args import add_source_args, source_kwargs


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-intake", description=__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--propose", type=int, default=3, help="how many split points to propose")
    p.add_argument("--rounds", type=int, default=200, help="timed rounds per block")
    p.add_argument("--splits", default=None, help="comma-separated split points to check (module paths or node names)")
    p.add_argument("--json", type=Path, default=None, help="also write the cut points here")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.input_shape is None:
        raise UserError("--input-shape C,H,W is needed to trace a network")
    kwargs = source_kwargs(args)
    network, backbone = _network(args, kwargs)
    splits = _resolved(backbone, args.splits.split(",")) if args.splits else []
    points = measure_cut_points(backbone, rounds=args.rounds)
    print(_table(points))
    proposed = propose_splits(points, args.propose)
    print(f"proposed split points (even shares of the measured latency): {','.join(proposed)}")
    depth = adaptive_depth_summary(backbone)
    print(f"adaptive depth: {_depth_line(depth)}")
    if splits:
        _check(args, network, backbone, splits)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"source": args.source, "input_shape": list(args.input_shape), "proposed": proposed,
                                       "adaptive_depth": depth, "cut_points": [p.to_dict() for p in points]}, indent=2) + "\n")
    return 0


def _table(points: list[CutPoint]) -> str:
    rows = [f"{'#':>3}  {'cut point':<36} {'features':<18} {'prefix ms':>9} {'share':>6}  also"]
    for p in points:
        rows.append(f"{p.index:>3}  {p.name:<36} {'x'.join(map(str, p.shape)):<18} {p.prefix_ms:>9.3f} {p.prefix_share:>6.1%}  {', '.join(p.aliases)}")
    return "\n".join(rows)


def _depth_line(depth: dict[str, Any]) -> str:
    if "refused" in depth:
        return f"no: {depth['refused']}"
    stages = ", ".join(f"{name} (skips {n})" for name, n in zip(depth["stages"], depth["skippable"]))
    return f"stages {stages}; edge-train-adaptive trains it"


def _network(args: argparse.Namespace, kwargs: dict[str, Any]) -> tuple[nn.Module | None, BlockBackbone]:
    """The traced network and its backbone; a zoo network is its own backbone."""
    if Source.parse(args.source).traced:
        return traced_network(args.source, args.num_classes, args.input_shape, kwargs, args.weights)
    return None, build_backbone(args.source, args.num_classes, args.input_shape, kwargs, args.weights)


def _resolved(backbone: BlockBackbone, splits: list[str]) -> list[str]:
    """The split points, each checked to be a clean cut before anything is timed."""
    try:
        for point in splits:
            backbone.resolve_split(point)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    return splits


def _check(args: argparse.Namespace, network: nn.Module | None, backbone: BlockBackbone, splits: list[str]) -> None:
    images = np.random.default_rng(0).random((4, *args.input_shape), dtype=np.float32)
    with tempfile.TemporaryDirectory(prefix="edge-intake-") as tmp:
        if network is None:
            result = check_chain(backbone, backbone, splits, Path(tmp), images, normalized=False)
        else:
            result = check_chain(network, backbone, splits, Path(tmp), images)
    verdict = "equal" if result.ok else "DIFFERENT"
    print(f"chain at {','.join(splits)}: {verdict} to the network (max |diff| / max(1, |logit|): torch {result.torch_diff:.2g}, "
          f"onnxruntime {result.onnx_diff:.2g}, worst segment {max(result.segment_diffs):.2g}; tolerance {TOLERANCE:g})")
    if not result.ok:
        raise UserError("the exported chain does not reproduce the network")


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
