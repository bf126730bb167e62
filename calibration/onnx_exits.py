"""Exits on a frozen ONNX backbone (edge-onnx): no PyTorch model needed.

The ONNX classifier is cut where one tensor crosses (engines.onnx_intake), its plain
segments run once over the data in onnxruntime and their features are kept on disk,
memory-mapped; the exit heads train in torch on those features (seed 000: the backbone
never changes, so nothing else needs it); temperatures are fitted on the calibration
split; the heads are written into the segments' graphs and the operating points are
planned and measured exactly as edge-calibrate does for a PyTorch network.

Cached features cannot be augmented: the heads see each training image as it is.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from numpy.lib.format import open_memmap
from torch import nn
from tqdm import tqdm

from calibration.data import Dataset, check_classes, load_dataset
from calibration.int8 import engine_table
from calibration.plots.calibrate import plot_pareto
from calibration.points import PointSettings, make_report, measure_operating_points, temperature_rows
from calibration.train import TrainConfig, fit, set_threads
from edge.atomic import write_json_atomic
from edge.errors import UserError
from edge.manifest import Manifest
from edge.runtime import Runtime
from engines.build import BuildOptions
from engines.heads import HeadSpec, exit_head
from engines.intake.cuts import CutPoint, propose_by_share
from engines.onnx_intake.build import ExitHeads, build_onnx_engines
from engines.onnx_intake.cuts import clean_cuts, resolve_cuts, time_cuts
from engines.onnx_intake.model import InputOptions, OnnxClassifier, OnnxIntakeError, load_classifier, open_model_session
from engines.onnx_intake.segments import check_chain, extract_segments

log = logging.getLogger(__name__)
CRITERIA = ("entropy", "maxprob")  # no learned gate: it would need the features' pooling in torch


@dataclass(frozen=True)
class OnnxExitsJob:
    model: Path
    cuts: tuple[str, ...] = ()  # tensor or node names; none: `propose` by measured latency share
    propose: int = 2
    data: str = "fashion-mnist"
    out: Path = Path("runs/onnx")
    inputs: InputOptions = InputOptions()
    head: HeadSpec = HeadSpec()
    train: TrainConfig = TrainConfig(epochs=3, lr=0.05)
    train_samples: int = 0  # 0: the whole training split (less the calibration split)
    calibration_samples: int = 5000
    test_samples: int = 0  # 0: the whole test split
    int8: bool = True
    profile_calls: int = 400
    rounds: int = 200  # timed rounds per piece when measuring the cut points
    classes: tuple[str, ...] = field(default=())  # class names; none: the dataset's


@dataclass
class Splits:
    train: Dataset
    calibration: Dataset
    test: Dataset


def measured_cuts(job: OnnxExitsJob) -> tuple[OnnxClassifier, list[CutPoint], list[str]]:
    """The classifier, its clean cut points with their prefix latency measured, and the
    `job.propose` cuts nearest to even shares of it."""
    set_threads()
    classifier = load_classifier(job.model, job.inputs)
    points = time_cuts(classifier, clean_cuts(classifier), job.rounds)
    if not points:
        raise OnnxIntakeError(f"{job.model}: no clean cut with a feature map crossing: no exit can go anywhere in this graph")
    return classifier, points, propose_by_share(points, job.propose)


def onnx_exits(job: OnnxExitsJob) -> dict[str, Any]:
    """Cut, cache features, train the heads, build the engines, plan and measure the
    operating points; writes calibration.json, pareto.png and engines/ under `job.out`."""
    classifier, points, proposed = measured_cuts(job)
    cuts = resolve_cuts(points, job.cuts or proposed, classifier)
    splits = load_splits(job, classifier.input_shape, classifier.num_classes)
    manifest, rows = build_exits(job, classifier, cuts, splits)
    table = engine_table(Runtime(manifest), splits.calibration, "fp32", list(CRITERIA))
    result = measure_operating_points(manifest, table, splits.calibration, splits.test,
                                      PointSettings(CRITERIA, None, job.int8, job.profile_calls))
    report = make_report(str(job.model), job.data, None, rows, None, result, splits.test)
    report["cuts"] = [c.to_dict() for c in points]
    report["chosen_cuts"] = [c.name for c in cuts]
    report["onnx"] = classifier.describe()
    write_json_atomic(job.out / "calibration.json", report)
    plot_pareto(report, job.out / "pareto.png")
    return report


def build_exits(job: OnnxExitsJob, classifier: OnnxClassifier, cuts: Sequence[CutPoint], splits: Splits) -> tuple[Manifest, list[dict[str, float]]]:
    """The engines under `job.out`/engines with heads trained on cached features and
    temperatures fitted on the calibration split (returned with their ECE rows)."""
    plain = extract_segments(classifier, cuts)
    check_chain(classifier, plain, splits.calibration.images[:8])
    cache = job.out / "features"
    features = {name: cached_features(cache, classifier, plain, data, name) for name, data in vars(splits).items()}
    heads = train_heads(features["train"][:-1], splits.train, cuts, job.head, job.train)
    rows = temperature_rows(exit_logits(heads, features["calibration"]), splits.calibration.labels,
                            exit_logits(heads, features["test"]), splits.test.labels)
    exits = ExitHeads(list(cuts), heads, [row["temperature"] for row in rows])
    manifest = build_onnx_engines(classifier, plain, exits, splits.train.classes, job.out / "engines", splits.calibration.images[:16],
                                  BuildOptions(name=job.model.stem))
    return manifest, rows


def load_splits(job: OnnxExitsJob, input_shape: tuple[int, int, int], num_classes: int) -> Splits:
    """Training, calibration (held out of the training split, as edge-calibrate holds it)
    and test splits at the model's input size, with as many classes as it has."""
    train_all = load_dataset(job.data, "train", input_shape)
    if job.classes:
        check_classes(train_all, job.classes, "--classes")
    if len(train_all.classes) != num_classes:
        raise UserError(f"{job.data} has {len(train_all.classes)} classes, {job.model} outputs {num_classes}")
    test = load_dataset(job.data, "test", input_shape, train_all.classes)
    train, calibration = train_all.split(min(job.calibration_samples / len(train_all), 0.5), seed=0)
    if job.train_samples:
        train = train.subset(slice(0, job.train_samples))
    if job.test_samples:
        test = test.subset(slice(0, job.test_samples))
    return Splits(train, calibration, test)


def cached_features(
    folder: Path, classifier: OnnxClassifier, plain: Sequence[onnx.ModelProto], data: Dataset, split: str, batch_size: int = 256,
) -> list[np.ndarray]:
    """Every cut's features and the model's logits for `data`, computed once by the plain
    segments in onnxruntime and kept in memory-mapped .npy files under a key of the
    segments and the data (a later run with the same ones reads them back)."""
    where = folder / f"{split}-{_key(plain, data)}"
    sessions = [open_model_session(s, classifier.source) for s in plain]
    paths = [where / f"segment_{k}.npy" for k in range(len(sessions))]
    if (where / "complete").is_file():
        return [np.load(p, mmap_mode="r") for p in paths]
    where.mkdir(parents=True, exist_ok=True)
    arrays: list[np.ndarray] = []
    for start in tqdm(range(0, len(data), batch_size), desc=f"features ({split})", leave=False):
        x = np.ascontiguousarray(data.images[start : start + batch_size], dtype=np.float32)
        for k, session in enumerate(sessions):
            x = session.run(None, {session.get_inputs()[0].name: x})[0]
            if len(arrays) <= k:
                arrays.append(open_memmap(paths[k], mode="w+", dtype=np.float32, shape=(len(data), *x.shape[1:])))
            arrays[k][start : start + len(x)] = x
    for array in arrays:
        array.flush()  # type: ignore[attr-defined]
    (where / "complete").touch()
    return [np.load(p, mmap_mode="r") for p in paths]


def _key(plain: Sequence[onnx.ModelProto], data: Dataset) -> str:
    digest = hashlib.sha256()
    for segment in plain:
        digest.update(segment.SerializeToString())
    digest.update(np.ascontiguousarray(data.images).tobytes())
    digest.update(np.ascontiguousarray(data.labels).tobytes())
    return digest.hexdigest()[:16]


def train_heads(features: Sequence[np.ndarray], data: Dataset, cuts: Sequence[CutPoint], spec: HeadSpec, cfg: TrainConfig) -> list[nn.Module]:
    """One head per cut, trained by cross-entropy on that cut's cached features. Seeded
    and ordered as train_exits_frozen does it, so a PyTorch network made from the same
    backbone (torch.manual_seed(cfg.seed) before its MultiExitNetwork) starts and learns alike."""
    torch.manual_seed(cfg.seed)
    heads: list[nn.Module] = [exit_head(c.shape, len(data.classes), spec) for c in cuts]
    for k, (head, cut) in enumerate(zip(heads, cuts)):
        on_features = Dataset(features[k], data.labels, data.classes, f"features at {cut.name}")

        def step(x: torch.Tensor, y: torch.Tensor, head: nn.Module = head) -> float:
            loss = F.cross_entropy(head(x), y)
            loss.backward()
            return float(loss.item())

        fit(head, list(head.parameters()), on_features, cfg, step, f"exit {k} ({cut.name})")
    return heads


@torch.no_grad()
def exit_logits(heads: Sequence[nn.Module], features: Sequence[np.ndarray], batch_size: int = 1000) -> list[np.ndarray]:
    """Each head's logits on its cut's cached features, then the model's own logits."""
    logits = []
    for head, f in zip(heads, features):
        head.eval()
        logits.append(np.concatenate([head(torch.from_numpy(np.array(f[s : s + batch_size]))).numpy() for s in range(0, len(f), batch_size)]))
    return [*logits, np.asarray(features[-1])]
