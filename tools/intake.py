"""edge-intake: list a network's cut points with the measured latency share of each prefix,
propose split points, and check a cut (the chained segments against the network;
engines.intake).

    edge-intake --source torchvision:resnet50 --input-shape 3,224,224
    edge-intake --source torchvision:resnet18 --weights mine.pt --num-classes 10 --input-shape 3,64,64 --splits layer2,layer3
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from edge.atomic import atomic_path
from edge.errors import UserError
from engines.adaptive import adaptive_depth_summary
from engines.intake.cuts import measure_cut_points, propose_splits
from engines.intake.report import check_cut, cut_table, depth_line, intake_network, resolved_splits
from tools._cli import run_main
from tools._source_args import add_source_args, source_kwargs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-intake", description=__doc__.splitlines()[0])
    add_source_args(p)
    p.add_argument("--num-classes", type=int, default=1000)
    p.add_argument("--propose", type=int, default=3, help="how many split points to propose")
    p.add_argument("--rounds", type=int, default=200, help="timed rounds per block")
    p.add_argument("--splits", default=None, help="comma-separated split points to check (module paths or node names)")
    p.add_argument("--json", type=Path, default=None, help="also write the cut points here")
    args = p.parse_args(argv)
    if args.input_shape is None:
        raise UserError("--input-shape C,H,W is needed to trace a network")
    network, backbone = intake_network(args.source, args.num_classes, args.input_shape, source_kwargs(args), args.weights)
    splits = resolved_splits(backbone, args.splits.split(",")) if args.splits else []
    points = measure_cut_points(backbone, rounds=args.rounds)
    print(cut_table(points))
    proposed = propose_splits(points, args.propose)
    print(f"proposed split points (even shares of the measured latency): {','.join(proposed)}")
    depth = adaptive_depth_summary(backbone)
    print(f"adaptive depth: {depth_line(depth)}")
    if splits:
        check_cut(network, backbone, splits, args.input_shape)
    if args.json:
        with atomic_path(args.json) as tmp:
            tmp.write_text(json.dumps({"source": args.source, "input_shape": list(args.input_shape), "proposed": proposed,
                                       "adaptive_depth": depth, "cut_points": [p.to_dict() for p in points]}, indent=2) + "\n")
    return 0


def cli() -> int:
    return run_main(main)
