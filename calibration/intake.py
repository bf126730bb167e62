"""One entry of the intake benchmark: a source traced and cut, every segment checked
against the network in torch and onnxruntime, and the chain at full depth (exits off)
timed against the static model at batch 1 through the real runtime, interleaved."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from calibration.data import Dataset
from calibration.evaluate import StaticModel, measure_interleaved, runtime_config
from calibration.plots.intake import plot_chain_costs
from calibration.train import set_threads
from edge.atomic import atomic_path
from edge.errors import UserError
from edge.runtime import Runtime
from engines.build import BuildOptions, build_engines
from engines.intake.check import check_chain
from engines.intake.cuts import cut_points
from engines.intake.sources import Source, build_backbone, traced_network
from engines.partition import MultiExitNetwork


@dataclass(frozen=True)
class IntakeEntry:
    """A source to measure; `splits` fixes the cut points (default: `cuts` spread ones)."""

    source: str
    input_shape: tuple[int, int, int]
    kwargs: dict[str, Any] = field(default_factory=dict)
    cuts: int = 3
    splits: tuple[str, ...] = ()


def spread_splits(backbone: Any, count: int) -> list[str]:
    """`count` stage ends (the outermost level with enough stages), else block outputs,
    spread evenly by position (no timing: the benchmark times the chain, not the choice)."""
    last = len(backbone.blocks) - 1
    stages = sorted((end, name) for name, end in backbone.stage_ends.items() if end < last)
    for depth in sorted({name.count(".") for _, name in stages}):
        level = [name for _, name in stages if name.count(".") == depth]
        if len(level) >= count:
            return _spread(level, count)
    points = cut_points(backbone)
    depth_cap = float(np.median([p.name.count(".") for p in points]))
    return _spread([p.name for p in points if p.name.count(".") <= depth_cap], count)


def _spread(names: list[str], count: int) -> list[str]:
    picks = sorted({max(0, (k + 1) * (len(names) + 1) // (count + 1) - 1) for k in range(count)})
    return [names[i] for i in picks]


def _network(entry: IntakeEntry) -> tuple[Any, Any]:
    """The traced network and its backbone; a zoo network (cut by hand) is its own backbone."""
    if Source.parse(entry.source).traced:
        return traced_network(entry.source, 10, entry.input_shape, entry.kwargs)
    return None, build_backbone(entry.source, 10, entry.input_shape, entry.kwargs)


def measure_entry(entry: IntakeEntry, out_dir: Path, images: int = 300, seed: int = 0) -> dict[str, Any]:
    """The intake.json record for one source (random weights: latency and equality only)."""
    torch.manual_seed(seed)
    started = time.perf_counter()
    try:
        network, backbone = _network(entry)
    except UserError as exc:
        return {"source": entry.source, "input_shape": list(entry.input_shape), "error": str(exc)}
    splits = list(entry.splits) or spread_splits(backbone, entry.cuts)
    rng = np.random.default_rng(seed)
    data = Dataset(rng.random((images, *entry.input_shape), dtype=np.float32), rng.integers(0, 10, images), tuple(map(str, range(10))), "random")
    check = check_chain(network or backbone, backbone, splits, out_dir / "chain", data.images[:4], normalized=network is not None)
    net = MultiExitNetwork(backbone, splits)
    manifest = build_engines(net, out_dir / "engines", data.classes, data.images[:16], options=BuildOptions(name=entry.source, random_check_batches=1))
    runtime = Runtime(out_dir / "engines")
    static = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    off = [None] * (net.num_exits - 1)
    measured = measure_interleaved({"static": static.config(), "chain": runtime_config(runtime, off, whole=False)}, data, progress=False, block=50)
    runtime.close()
    return {
        "source": entry.source, "input_shape": list(entry.input_shape), "kwargs": entry.kwargs,
        "cut_points": splits, "num_segments": net.num_exits,
        "max_abs_diff_torch": check.torch_diff, "max_abs_diff_onnx": check.onnx_diff,
        "max_segment_diff": max(check.segment_diffs), "equal": check.ok,
        "static_ms": measured["static"].mean_ms, "chain_full_depth_ms": measured["chain"].mean_ms,
        "chain_over_static": measured["chain"].mean_ms / measured["static"].mean_ms,
        "blocks": len(backbone.blocks), "seconds": time.perf_counter() - started,
    }


# --- the benchmark over the list (edge-intake-bench) ---------------------------------------

SMALL = (3, 64, 64)
LARGE = (3, 224, 224)
ENTRIES = [
    IntakeEntry("torchvision:resnet50", LARGE),
    IntakeEntry("torchvision:mobilenet_v3_large", LARGE),
    # The same cuts through the zoo's hand-cut networks and through tracing: the mechanism's own cost.
    IntakeEntry("tv_resnet18", LARGE, splits=("layer1", "layer2", "layer3")),
    IntakeEntry("torchvision:resnet18", LARGE, splits=("layer1", "layer2", "layer3")),
    IntakeEntry("tv_mobilenet_v2", LARGE, splits=("stage2", "stage4", "stage5")),
    IntakeEntry("torchvision:mobilenet_v2", LARGE, splits=("features.3", "features.10", "features.13")),
    *(IntakeEntry(f"torchvision:{name}", SMALL) for name in (
        "resnet18", "resnet50", "resnext50_32x4d", "wide_resnet50_2", "mobilenet_v2", "mobilenet_v3_large",
        "efficientnet_b0", "efficientnet_v2_s", "regnet_y_400mf", "convnext_tiny", "shufflenet_v2_x1_0",
        "mnasnet1_0", "densenet121", "vgg11_bn", "swin_t")),
    IntakeEntry("torchvision:vit_b_16", SMALL, {"image_size": 64}),
    IntakeEntry("timm:resnet18", SMALL),
    IntakeEntry("timm:efficientnet_b0", SMALL),
    IntakeEntry("timm:deit_tiny_patch16_224", SMALL, {"img_size": 64}),
    IntakeEntry("module:tests.user_nets:TinyResNet", SMALL),
]



def run_intake_bench(out: Path, only: Sequence[str] = (), images: int = 300, resume: bool = False, plot: Path | None = None) -> list[dict[str, Any]]:
    """Every listed architecture (or those whose source contains one of `only`) traced, cut,
    checked and timed; results written to `out` after each one, and the bar chart."""
    set_threads()
    wanted = [w for w in only if w]
    entries = [e for e in ENTRIES if not wanted or any(w in e.source for w in wanted)]
    results: list[dict[str, Any]] = json.loads(out.read_text()) if resume and out.is_file() else []
    done = {(r["source"], tuple(r["input_shape"])) for r in results}
    entries = [e for e in entries if (e.source, e.input_shape) not in done]
    for entry in tqdm(entries, desc="architectures"):
        with tempfile.TemporaryDirectory(prefix="edge-intake-") as tmp:
            record = measure_entry(entry, Path(tmp), images)
        results.append(record)
        print(_line(record), flush=True)
        _write(results, out)  # after every entry: a long run keeps what it measured
    _write(results, out)
    picture = plot or out.with_suffix(".png")
    plot_chain_costs(results, picture)
    print(f"{len(results)} architectures -> {out}, {picture}")
    return results



def _write(results: list[dict[str, Any]], path: Path) -> None:
    results.sort(key=_position)  # a resumed run still reads in the list's order
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")


def _position(record: dict[str, Any]) -> int:
    keys = [(e.source, e.input_shape) for e in ENTRIES]
    key = (record["source"], tuple(record["input_shape"]))
    return keys.index(key) if key in keys else len(keys)


def _line(r: dict[str, Any]) -> str:
    if "error" in r:
        return f"{r['source']}: cannot be cut: {r['error']}"
    shape = "x".join(map(str, r["input_shape"]))
    return (f"{r['source']} {shape}: {r['num_segments']} segments at {','.join(r['cut_points'])}; diff torch {r['max_abs_diff_torch']:.1g} "
            f"onnx {r['max_abs_diff_onnx']:.1g}; static {r['static_ms']:.2f} ms, chain {r['chain_full_depth_ms']:.2f} ms "
            f"({r['chain_over_static']:.3f}x)")
