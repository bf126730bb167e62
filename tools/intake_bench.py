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
from calibration.train import set_threads
from edge.atomic import atomic_path
from tools._cli import run_main

SMALL = (3, 64, 64)
LARGE = (3, 224, 224)
ENTRIES = [
    IntakeEntry("torchvision:resnet50", LARGE),
    IntakeEntry("torchvision:mobilenet_v3_large", LARGE),
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
        with atomic_path(args.out) as out:  # after every entry: a long run keeps what it measured
            out.write_text(json.dumps(results, indent=2) + "\n")
    return 0


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
