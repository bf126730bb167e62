"""The quickstart (`edge-quickstart`): train a small multi-exit ResNet, build its engines,
pick an entropy threshold on a held-out split, and compare the early-exit chain with the
static model on the test set, at batch 1."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from calibration import pipeline
from calibration.data import Dataset, load_dataset
from calibration.evaluate import Measurement, StaticModel, measure_interleaved, runtime_config, segment_latencies
from calibration.train import TrainConfig, set_threads
from edge.runtime import Runtime


@dataclass(frozen=True)
class Quickstart:
    data: str = "fashion-mnist"  # fashion-mnist, digits, idx:DIR, folder:DIR
    out: Path = Path("runs/quickstart")
    arch: str = "resnet20"
    splits: tuple[str, ...] = ("layer1", "layer2")  # split points (block or stage names)
    epochs: int = 2
    train_samples: int = 30000  # 0: all 55k
    test_samples: int = 0  # 0: all
    max_drop: float = 0.005  # accuracy drop allowed against the final exit (0.005: half a point)
    calibration_samples: int = 5000


def quickstart(job: Quickstart) -> dict[str, Any]:
    """Train (or reuse) the static model and its exits, build, pick the threshold, measure
    against the static model; writes quickstart.json under `job.out` and returns it."""
    set_threads()
    train, calibration, test = load_splits(job)
    cfg = TrainConfig(epochs=job.epochs, flip=job.data == "fashion-mnist", shift=1)
    out: Path = job.out

    spec = pipeline.backbone_spec(job.arch, train)
    static_net = pipeline.static_model(spec, train, cfg, out / "static.pt")
    exit_spec = pipeline.backbone_spec(job.arch, train)
    exit_spec.split_points = list(job.splits)
    joint_cfg = dataclasses.replace(cfg, epochs=1, lr=0.05)  # fine-tune the static backbone with its exits
    net = pipeline.multi_exit_model(exit_spec, "joint", train, joint_cfg, out / "multi_exit.pt", static=static_net)

    manifest = pipeline.build(net, train, out / "engines", f"{job.arch}-{job.data}", static=static_net)
    runtime = Runtime(manifest)
    segment_ms = segment_latencies(runtime, calibration)
    threshold, _ = pipeline.pick_threshold(net, calibration, segment_ms, job.max_drop)
    points = [pipeline.entropy_point("full", None, net.num_exits)]
    if threshold is not None:
        points.append(pipeline.entropy_point("balanced", threshold, net.num_exits))
    manifest = pipeline.with_points(manifest, points, default=points[-1].name)
    runtime = Runtime(manifest)

    static = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    measured = measure_interleaved({"static": static.config(), "chain": runtime_config(runtime)}, test)
    return report(job, measured["static"], measured["chain"], threshold, out)


def load_splits(job: Quickstart) -> tuple[Dataset, Dataset, Dataset]:
    train_all = load_dataset(job.data, "train")
    test = load_dataset(job.data, "test")
    fraction = min(job.calibration_samples / len(train_all), 0.5)
    train, calibration = train_all.split(fraction, seed=0)
    if job.train_samples:
        train = train.subset(slice(0, job.train_samples))
    if job.test_samples:
        test = test.subset(slice(0, job.test_samples))
    return train, calibration, test


def verdict(static: Measurement, chain: Measurement) -> str:
    """One plain line: do the exits pay here?"""
    if chain.mean_ms < static.mean_ms:
        return f"exits pay on this model and this device: {chain.mean_ms / static.mean_ms:.2f}x the static model's latency"
    return (f"exits do not pay on this model and this device ({chain.mean_ms:.3f} ms against the static model's "
            f"{static.mean_ms:.3f} ms): serve the static engine (edge-calibrate makes it the default point where it is faster)")


def report(job: Quickstart, static: Measurement, chain: Measurement, threshold: float | None, out: Path) -> dict[str, Any]:
    print(f"\n{job.arch} on {job.data}: {chain.samples} test images, batch 1, onnxruntime CPU")
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
    return summary
