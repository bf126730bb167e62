"""intake-bench: every listed architecture traced, cut, checked and timed -> intake.json.

    edge-intake-bench --out docs/results/intake.json             # the whole list (about an hour on 2 cores)
    edge-intake-bench --out /tmp/intake.json --only resnet18,vit  # a subset
    edge-intake-bench --out docs/results/intake.json --resume     # go on after an interruption
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from tqdm import tqdm

from calibration.intake import IntakeEntry, measure_entry
from calibration.plots import pyplot, save
from calibration.train import set_threads
from edge.atomic import atomic_path
from tools._cli import run_main

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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="edge-intake-bench", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("docs/results/intake.json"))
    p.add_argument("--only", default="", help="comma-separated substrings of the sources to run")
    p.add_argument("--images", type=int, default=300, help="batch-1 calls per configuration")
    p.add_argument("--resume", action="store_true", help="keep the entries --out already holds and run the rest")
    p.add_argument("--plot", type=Path, default=None, help="the chain-over-static bar chart (default: --out with .png)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    set_threads()
    wanted = [w for w in args.only.split(",") if w]
    entries = [e for e in ENTRIES if not wanted or any(w in e.source for w in wanted)]
    results = json.loads(args.out.read_text()) if args.resume and args.out.is_file() else []
    done = {(r["source"], tuple(r["input_shape"])) for r in results}
    entries = [e for e in entries if (e.source, e.input_shape) not in done]
    for entry in tqdm(entries, desc="architectures"):
        with tempfile.TemporaryDirectory(prefix="edge-intake-") as tmp:
            record = measure_entry(entry, Path(tmp), args.images)
        results.append(record)
        print(_line(record), flush=True)
        _write(results, args.out)  # after every entry: a long run keeps what it measured
    _write(results, args.out)
    plot = args.plot or args.out.with_suffix(".png")
    plot_chain_costs(results, plot)
    print(f"{len(results)} architectures -> {args.out}, {plot}")
    return 0


def _write(results: list[dict], path: Path) -> None:  # type: ignore[type-arg]
    results.sort(key=_position)  # a resumed run still reads in the list's order
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(results, indent=2) + "\n")


def plot_chain_costs(results: list[dict], path: Path) -> None:  # type: ignore[type-arg]
    """One bar per architecture: the chain at full depth over the static model."""
    plt = pyplot()
    labels = [f"{r['source']} {'x'.join(map(str, r['input_shape']))}" for r in results]
    ratios = [r.get("chain_over_static", 0.0) for r in results]
    fig, ax = plt.subplots(figsize=(8, 0.3 * len(results) + 1.2))
    ax.barh(labels, ratios, color=["tab:red" if "error" in r else "tab:blue" for r in results])
    for y, r in enumerate(results):
        if "error" in r:
            ax.text(0.02, y, "cannot be cut", va="center")
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.axvline(1.05, color="grey", linestyle="--", linewidth=0.8)
    ax.invert_yaxis()
    ax.set_xlim(0.8, max([1.3, *ratios]) + 0.05)
    ax.set_xlabel("chain at full depth / static model (onnxruntime, batch 1)")
    save(fig, path)


def _position(record: dict) -> int:  # type: ignore[type-arg]
    keys = [(e.source, e.input_shape) for e in ENTRIES]
    key = (record["source"], tuple(record["input_shape"]))
    return keys.index(key) if key in keys else len(keys)


def _line(r: dict) -> str:  # type: ignore[type-arg]
    if "error" in r:
        return f"{r['source']}: cannot be cut: {r['error']}"
    shape = "x".join(map(str, r["input_shape"]))
    return (f"{r['source']} {shape}: {r['num_segments']} segments at {','.join(r['cut_points'])}; diff torch {r['max_abs_diff_torch']:.1g} "
            f"onnx {r['max_abs_diff_onnx']:.1g}; static {r['static_ms']:.2f} ms, chain {r['chain_full_depth_ms']:.2f} ms "
            f"({r['chain_over_static']:.3f}x)")


def cli() -> int:
    return run_main(main)


if __name__ == "__main__":
    raise SystemExit(cli())
