"""Quickstart: train a small multi-exit ResNet on Fashion-MNIST, build its engines, and
compare the early-exit chain with the static model on the test set, at batch 1.

    edge-quickstart            # about 6 minutes on 2 cores
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Measurement, StaticModel, measure_interleaved, runtime_config, segment_latencies
from calibration.train import TrainConfig, set_threads
from edge.runtime import Runtime
from tools._cli import run_main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-quickstart", description=__doc__.splitlines()[0])
    p.add_argument("--data", default="fashion-mnist", help="dataset: fashion-mnist, digits, idx:DIR, folder:DIR")
    p.add_argument("--out", type=Path, default=Path("runs/quickstart"))
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--splits", default="layer1,layer2", help="comma-separated split points (block or stage names)")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--train-samples", type=int, default=30000, help="train on this many samples (0 = all 55k)")
    p.add_argument("--test-samples", type=int, default=0, help="evaluate on this many test samples (0 = all)")
    p.add_argument("--max-drop", type=float, default=0.005, help="accuracy drop allowed vs the final exit (0.005 = 0.5 points)")
    p.add_argument("--calibration-samples", type=int, default=5000)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    train, calibration, test = load_splits(args)
    cfg = TrainConfig(epochs=args.epochs, flip=args.data == "fashion-mnist", shift=1)
    out: Path = args.out

    spec = pipeline.backbone_spec(args.arch, train)
    static_net = pipeline.static_model(spec, train, cfg, out / "static.pt")
    exit_spec = pipeline.backbone_spec(args.arch, train)
    exit_spec.split_points = args.splits.split(",")
    joint_cfg = dataclasses.replace(cfg, epochs=1, lr=0.05)  # fine-tune the static backbone with its exits
    net = pipeline.multi_exit_model(exit_spec, "joint", train, joint_cfg, out / "multi_exit.pt", static=static_net)

    manifest = pipeline.build(net, train, out / "engines", f"{args.arch}-{args.data}", static=static_net)
    runtime = Runtime(manifest)
    segment_ms = segment_latencies(runtime, calibration)
    threshold, _ = pipeline.pick_threshold(net, calibration, segment_ms, args.max_drop)
    points = [pipeline.entropy_point("full", None, net.num_exits)]
    if threshold is not None:
        points.append(pipeline.entropy_point("balanced", threshold, net.num_exits))
    manifest = pipeline.with_points(manifest, points, default=points[-1].name)
    runtime = Runtime(manifest)

    static = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    measured = measure_interleaved({"static": static.config(), "chain": runtime_config(runtime)}, test)
    report(args, measured["static"], measured["chain"], threshold, out)
    return 0


def load_splits(args: argparse.Namespace) -> tuple[Dataset, Dataset, Dataset]:
    train_all = load_dataset(args.data, "train")
    test = load_dataset(args.data, "test")
    fraction = min(args.calibration_samples / len(train_all), 0.5)
    train, calibration = train_all.split(fraction, seed=0)
    if args.train_samples:
        train = train.subset(slice(0, args.train_samples))
    if args.test_samples:
        test = test.subset(slice(0, args.test_samples))
    return train, calibration, test


def verdict(static: Measurement, chain: Measurement) -> str:
    """One plain line: do the exits pay here?"""
    if chain.mean_ms < static.mean_ms:
        return f"exits pay on this model and this device: {chain.mean_ms / static.mean_ms:.2f}x the static model's latency"
    return (f"exits do not pay on this model and this device ({chain.mean_ms:.3f} ms against the static model's "
            f"{static.mean_ms:.3f} ms): serve the static engine (edge-calibrate makes it the default point where it is faster)")


def report(args: argparse.Namespace, static: Measurement, chain: Measurement, threshold: float | None, out: Path) -> None:
    print(f"\n{args.arch} on {args.data}: {chain.samples} test images, batch 1, onnxruntime CPU")
    print(f"{'':>22} {'accuracy':>9} {'mean ms':>8} {'p99 ms':>8}")
    print(f"{'static model':>22} {static.accuracy:9.2%} {static.mean_ms:8.3f} {static.p99_ms:8.3f}")
    label = f"early exit (H<={threshold})" if threshold is not None else "chain, full depth"
    print(f"{label:>22} {chain.accuracy:9.2%} {chain.mean_ms:8.3f} {chain.p99_ms:8.3f}")
    print(f"speed-up: {static.mean_ms / chain.mean_ms:.2f}x   accuracy change: {100 * (chain.accuracy - static.accuracy):+.2f} points")
    print("exit histogram: " + "  ".join(f"exit {k}: {f:.1%}" for k, f in enumerate(chain.exit_fractions)))
    said = verdict(static, chain)
    print(said)
    summary = {"static": static.to_dict(), "chain": chain.to_dict(), "threshold": threshold, "manifest": str(out / "engines" / "manifest.json"),
               "verdict": said}
    (out / "quickstart.json").write_text(json.dumps(summary, indent=2))
    print(f"manifest: {out / 'engines' / 'manifest.json'}   summary: {out / 'quickstart.json'}")


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
