"""edge-onnx-bench: frozen exits from an ONNX file against frozen exits from the PyTorch
network, one backbone, equal thresholds (calibration.onnx_parity; writes onnx-parity.json).

    edge-onnx-bench                      # ResNet-20 on Fashion-MNIST, trained here and cached
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.onnx_parity import ParityJob, run_parity
from tools._cli import run_main


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="edge-onnx-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("runs/onnx-parity"), help="checkpoints, ONNX files, cached features")
    p.add_argument("--results", type=Path, default=Path("docs/results/onnx-parity.json"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--splits", default="layer1,layer2")
    p.add_argument("--backbone-epochs", type=int, default=4)
    p.add_argument("--exit-epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, default=30000)
    p.add_argument("--test-samples", type=int, default=0, help="0 = the whole test split")
    a = p.parse_args(argv)
    job = ParityJob(a.out, a.results, a.data, a.arch, tuple(a.splits.split(",")), a.backbone_epochs, a.exit_epochs,
                    a.train_samples, a.test_samples)
    report = run_parity(job)
    print(f"cuts: PyTorch {','.join(report['cuts']['torch'])} = ONNX {','.join(report['cuts']['onnx'])}")
    print(f"{'point':>9} {'torch acc':>9} {'onnx acc':>9} {'diff pt':>8} {'torch ms':>9} {'onnx ms':>8} {'ratio':>6}")
    for p_ in report["points"]:
        t, o = p_["torch"], p_["onnx"]
        print(f"{p_['point']:>9} {t['accuracy']:9.2%} {o['accuracy']:9.2%} {p_['accuracy_diff_points']:+8.2f} "
              f"{t['mean_ms']:9.3f} {o['mean_ms']:8.3f} {p_['latency_ratio']:6.3f}")
    print(f"wrote {job.results}")
    return 0


def cli() -> int:
    return run_main(main)
