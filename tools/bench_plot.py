"""The benchmark's picture: accuracy vs mean batch-1 latency, one panel per model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tools._plot import pyplot, save


def plot_bench(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        static = model["static"]
        ax.scatter([static["mean_ms"]], [100 * static["accuracy"]], marker="*", s=160, color="black", label="static model", zorder=3)
        for mode, v in model["variants"].items():
            points = sorted(v["sweep"], key=lambda p: p["mean_ms"])
            line = ax.plot([p["mean_ms"] for p in points], [100 * p["accuracy"] for p in points], marker="o", label=f"{mode} exits (entropy sweep)")
            color = line[0].get_color()
            full = v["full_depth"]
            ax.scatter([full["mean_ms"]], [100 * full["accuracy"]], marker="s", color=color, label=f"{mode} chain, full depth (exits off)")
            if "exits_evaluated" in v:
                evaluated = v["exits_evaluated"]
                ax.scatter([evaluated["mean_ms"]], [100 * evaluated["accuracy"]], marker="D", facecolors="none", edgecolors=color, label=f"{mode} chain, exits computed, none taken")
            ax.scatter([p["predicted_mean_ms"] for p in points], [100 * p["accuracy"] for p in points], marker="x", color=color, alpha=0.6, label=f"{mode} predicted")
        ax.axhline(100 * static["accuracy"] - 0.5, color="grey", linestyle=":", label="static - 0.5 points")
        ax.axvline(0.75 * static["mean_ms"], color="grey", linestyle="--", linewidth=0.8, label="0.75 x static latency")
        ax.set_title(f"{name} on {report['dataset']} ({report['test_samples']} test images)")
        ax.set_xlabel("mean latency per image, batch 1 (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path)
