"""Frozen exits made from an ONNX file against frozen exits made from the PyTorch network,
on one backbone (edge-onnx-bench; docs/results/onnx-parity.json).

A backbone is trained here and exported to a plain ONNX classifier. The PyTorch path puts
exit heads on the network after the named blocks and trains them frozen; the ONNX path
cuts the file where the same features cross (found by their values) and trains its heads
on cached features, seeded alike, on the same splits. Both chains are then served at the
same thresholds (the PyTorch chain's, chosen on the calibration split) and measured at
batch 1 on the test split, interleaved.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from calibration import pipeline
from calibration.data import load_dataset
from calibration.evaluate import Config, measure_interleaved, runtime_config
from calibration.exits import exit_logits
from calibration.int8 import engine_table
from calibration.onnx_exits import OnnxExitsJob, Splits, build_exits, load_splits
from calibration.points import final_accuracy, profile, temperature_rows
from calibration.thresholds import Target, search_thresholds
from calibration.train import TrainConfig, set_threads, train_exits_frozen
from edge.atomic import write_json_atomic
from edge.errors import EdgeError
from edge.manifest import Manifest
from edge.runtime import Runtime
from engines.backbone import BlockBackbone
from engines.build import BuildOptions, build_engines
from engines.export import export_module
from engines.intake.cuts import CutPoint
from engines.onnx_intake.cuts import clean_cuts, tensor_values
from engines.onnx_intake.model import OnnxClassifier, load_classifier
from engines.partition import MultiExitNetwork

DROPS = {"balanced": 0.5, "fast": 1.0}  # accuracy drops (points) the shared thresholds are chosen for


@dataclass(frozen=True)
class ParityJob:
    out: Path = Path("runs/onnx-parity")
    results: Path = Path("docs/results/onnx-parity.json")
    data: str = "fashion-mnist"
    arch: str = "resnet20"
    splits: tuple[str, ...] = ("layer1", "layer2")
    backbone_epochs: int = 4
    exit_epochs: int = 3
    train_samples: int = 30000
    test_samples: int = 0  # 0: the whole test split
    profile_calls: int = 300


def run_parity(job: ParityJob) -> dict[str, Any]:
    set_threads()
    exits_cfg = TrainConfig(epochs=job.exit_epochs, seed=0)
    onnx_job = OnnxExitsJob(job.out / "model.onnx", data=job.data, out=job.out / "onnx", train=exits_cfg,
                            train_samples=job.train_samples, test_samples=job.test_samples)
    shape = load_dataset(job.data, "test").input_shape
    classes = len(load_dataset(job.data, "test").classes)
    splits = load_splits(onnx_job, shape, classes)
    backbone = pipeline.static_model(pipeline.backbone_spec(job.arch, splits.train), splits.train,
                                     TrainConfig(epochs=job.backbone_epochs, shift=1, seed=0), job.out / "static.pt")
    export_module(backbone.eval(), torch.from_numpy(splits.calibration.images[:2]), onnx_job.model, "input", ["logits"])
    torch_manifest, torch_rows = torch_chain(backbone, job, splits, exits_cfg)
    classifier = load_classifier(onnx_job.model)
    cuts = matching_cuts(classifier, backbone, torch_manifest, splits.calibration.images[:4])
    onnx_manifest, onnx_rows = build_exits(onnx_job, classifier, cuts, splits)
    thresholds = shared_thresholds(Runtime(torch_manifest), splits, job.profile_calls)
    measured = measure_both(Runtime(torch_manifest), Runtime(onnx_manifest), thresholds, splits)
    report = parity_report(job, thresholds, measured, torch_rows, onnx_rows, cuts)
    write_json_atomic(job.results, report)
    return report


def torch_chain(backbone: BlockBackbone, job: ParityJob, splits: Splits, cfg: TrainConfig) -> tuple[Manifest, list[dict[str, float]]]:
    """Frozen exits the PyTorch way, their heads started from the seed the ONNX path uses."""
    torch.manual_seed(cfg.seed)
    net = MultiExitNetwork(copy.deepcopy(backbone), list(job.splits))
    train_exits_frozen(net, splits.train, cfg)
    rows = temperature_rows(exit_logits(net, splits.calibration), splits.calibration.labels, exit_logits(net, splits.test), splits.test.labels)
    manifest = build_engines(net, job.out / "torch" / "engines", splits.train.classes, splits.calibration.images[:16],
                             options=BuildOptions(name="torch"), temperatures=[r["temperature"] for r in rows])
    return manifest, rows


def matching_cuts(classifier: OnnxClassifier, backbone: BlockBackbone, manifest: Manifest, images: np.ndarray) -> list[CutPoint]:
    """The ONNX cut points whose tensors hold the features the PyTorch segments hand on."""
    net = MultiExitNetwork(backbone, [e.after for e in manifest.exits[:-1]]).eval()
    points = clean_cuts(classifier)
    values = tensor_values(classifier, [p.name for p in points], images)
    x, chosen = torch.from_numpy(images), []
    for segment in net.segment_list[:-1]:
        with torch.no_grad():
            x = segment.body(x)
        same = [p for p in points if values[p.name].shape == tuple(x.shape) and np.allclose(values[p.name], x.numpy(), atol=1e-4)]
        if not same:
            raise EdgeError(f"no tensor of {classifier.source} holds the features after {segment}")
        chosen.append(same[-1])
    return chosen


def shared_thresholds(runtime: Runtime, splits: Splits, calls: int) -> dict[str, list[float | None]]:
    """Entropy thresholds chosen on the PyTorch chain for each accuracy drop, and exits off."""
    table = engine_table(runtime, splits.calibration, "fp32", ["entropy"])
    model = profile(runtime, splits.calibration, calls)[1].model
    reference = final_accuracy(table)
    chosen: dict[str, list[float | None]] = {"full": [None] * (runtime.num_exits - 1)}
    for name, drop in DROPS.items():
        chosen[name] = search_thresholds(table, "entropy", model, Target(max_drop=drop / 100, reference_accuracy=reference)).thresholds
    return chosen


def measure_both(torch_runtime: Runtime, onnx_runtime: Runtime, thresholds: dict[str, list[float | None]], splits: Splits) -> dict[str, Any]:
    configs: dict[str, Config] = {}
    for name, values in thresholds.items():
        configs[f"torch/{name}"] = runtime_config(torch_runtime, values, "entropy")
        configs[f"onnx/{name}"] = runtime_config(onnx_runtime, values, "entropy")
    return measure_interleaved(configs, splits.test)


def parity_report(
    job: ParityJob, thresholds: dict[str, list[float | None]], measured: dict[str, Any],
    torch_rows: list[dict[str, float]], onnx_rows: list[dict[str, float]], cuts: list[CutPoint],
) -> dict[str, Any]:
    points = []
    for name, values in thresholds.items():
        t, o = measured[f"torch/{name}"], measured[f"onnx/{name}"]
        points.append({
            "point": name, "thresholds": values, "torch": t.to_dict(), "onnx": o.to_dict(),
            "accuracy_diff_points": (o.accuracy - t.accuracy) * 100, "latency_ratio": o.mean_ms / t.mean_ms,
        })
    return {
        "job": {k: str(v) if isinstance(v, Path) else v for k, v in dataclasses.asdict(job).items()},
        "cuts": {"torch": list(job.splits), "onnx": [c.name for c in cuts]},
        "temperatures": {"torch": [r["temperature"] for r in torch_rows], "onnx": [r["temperature"] for r in onnx_rows]},
        "points": points,
        "worst_accuracy_diff_points": max(abs(p["accuracy_diff_points"]) for p in points),
        "worst_latency_ratio_off_by": max(abs(p["latency_ratio"] - 1.0) for p in points),
    }
