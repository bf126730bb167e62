"""edge-onnx: exits on a frozen ONNX classifier, no PyTorch model needed (calibration.onnx_exits).

    edge-onnx model.onnx --list
    edge-onnx model.onnx --cuts relu_4,add_6 --data folder:my_images --out runs/onnx
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.onnx_exits import OnnxExitsJob, measured_cuts, onnx_exits
from calibration.points import print_summary
from calibration.train import TrainConfig
from edge.manifest import MANIFEST_NAME
from engines.heads import HeadSpec
from engines.intake.report import cut_table
from engines.onnx_intake.model import LAYOUTS, InputOptions
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> tuple[OnnxExitsJob, bool]:
    p = argparse.ArgumentParser(prog="edge-onnx", description=__doc__.splitlines()[0])
    p.add_argument("model", type=Path, help="an ONNX image classifier (one image input, one logits output)")
    p.add_argument("--list", action="store_true", help="list the clean cut points with each prefix's measured latency share, and stop")
    p.add_argument("--cuts", default="", help="comma-separated tensor or node names (default: --propose of them, by measured latency)")
    p.add_argument("--propose", type=int, default=2, help="how many cut points to propose")
    p.add_argument("--data", default="fashion-mnist", help="fashion-mnist, digits, idx:DIR, folder:DIR")
    p.add_argument("--out", type=Path, default=Path("runs/onnx"))
    p.add_argument("--layout", choices=LAYOUTS, default="auto", help="the model's input layout")
    p.add_argument("--mean", default="", help="per-channel mean the model expects, applied in the graph to [0, 1] images")
    p.add_argument("--std", default="", help="per-channel std, likewise")
    p.add_argument("--output", default=None, help="the logits output, where the model has several")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--head-conv", type=int, default=0, help="> 0: a conv3x3-BN-ReLU of this width in each exit head")
    p.add_argument("--train-samples", type=int, default=0, help="0 = the whole training split")
    p.add_argument("--calibration-samples", type=int, default=5000)
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    p.add_argument("--profile-calls", type=int, default=400)
    p.add_argument("--rounds", type=int, default=200, help="timed rounds per piece for the cut points")
    p.add_argument("--no-int8", dest="int8", action="store_false", help="skip the INT8 engines")
    a = p.parse_args(argv)
    inputs = InputOptions(a.layout, _floats(a.mean), _floats(a.std), a.output)
    job = OnnxExitsJob(
        a.model, tuple(c for c in a.cuts.split(",") if c), a.propose, a.data, a.out, inputs, HeadSpec(conv_channels=a.head_conv),
        TrainConfig(epochs=a.epochs, lr=a.lr, batch_size=a.batch_size), a.train_samples, a.calibration_samples, a.test_samples,
        a.int8, a.profile_calls, a.rounds,
    )
    return job, a.list


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(v) for v in text.split(",") if v)


def main(argv: list[str] | None = None) -> int:
    job, list_only = parse_args(argv)
    if list_only:
        _, points, proposed = measured_cuts(job)
        print(cut_table(points))
        print(f"proposed cuts (even shares of the measured latency): {','.join(proposed)}")
        return 0
    report = onnx_exits(job)
    print(f"cuts: {', '.join(report['chosen_cuts'])}")
    print_summary(report)
    print(f"wrote {job.out / 'engines' / MANIFEST_NAME}, {job.out / 'calibration.json'} and {job.out / 'pareto.png'}")
    return 0


def cli() -> int:
    return run_main(main)
