"""The benchmark's pictures: accuracy against mean batch-1 latency relative to the static
model, one panel per model: each exit set's chosen point and its chain at full depth;
and, for models with an adaptive-depth version, its depth x exits frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save


def plot_bench(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    models = report["models"]
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models), 4.5), squeeze=False)
    for ax, (name, model) in zip(axes[0], models.items()):
        static = model["static"]
        ax.scatter([1.0], [100 * static["accuracy"]], marker="*", s=160, color="black", label="static model", zorder=3)
        for label, s in model["sets"].items():
            point, full = s["point"], s["full"]
            line = ax.scatter([point["ratio"]], [100 * point["accuracy"]], marker="o", label=f"{label}: {len(s['exits'])} exits")
            color = line.get_facecolor()[0]
            ax.scatter([full["ratio"]], [100 * full["accuracy"]], marker="s", facecolors="none", edgecolors=[color])
            ax.scatter([point["predicted_ms"] / point["mean_ms"] * point["ratio"]], [100 * point["accuracy"]], marker="x", color=[color], alpha=0.6)
        ax.axhline(100 * static["accuracy"] - 100 * model.get("max_drop", 0.005), color="grey", linestyle=":", label="static - target drop")
        ax.set_title(f"{name} ({model['test_samples']} test images)")
        ax.set_xlabel("mean latency, batch 1, / static model's (int8: / static int8's)")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, title="o point, x predicted, square full depth", title_fontsize=7)
    save(fig, path)


def plot_depth_frontiers(report: dict[str, Any], path: Path) -> bool:
    """Every depth configuration, exits off (squares) and at its thresholds (dots), the
    frontier through them, against the static model (a star); False (no file) where no
    model has an adaptive-depth version."""
    models = {name: m["depth_and_exits"] for name, m in report["models"].items() if "depth_and_exits" in m}
    if not models:
        return False
    plt = pyplot()
    fig, axes = plt.subplots(1, len(models), figsize=(7 * len(models), 5), squeeze=False)
    for ax, (name, d) in zip(axes[0], models.items()):
        static = d["static"]
        points = {p["name"]: p for p in d["points"]}
        for p in points.values():
            off = p["name"].endswith("-off")
            ax.scatter([p["ratio"]], [100 * p["accuracy"]], marker="s" if off else "o", color="tab:blue" if off else "tab:orange")
            ax.annotate(p["name"], (p["ratio"], 100 * p["accuracy"]), fontsize=6, xytext=(3, 3), textcoords="offset points")
        front = [(1.0, 100 * static["accuracy"]) if n == "static" else (points[n]["ratio"], 100 * points[n]["accuracy"]) for n in d["frontier"]]
        ax.plot(*zip(*front), color="grey", linewidth=1, label="frontier")
        ax.scatter([1.0], [100 * static["accuracy"]], marker="*", s=160, color="black", label="static model", zorder=3)
        ax.axhline(100 * static["accuracy"] - report["max_drop_pt"], color="grey", linestyle=":", label="static - target drop")
        ax.set_title(f"{name}: adaptive depth x exits (square: exits off, dot: exits on)")
        ax.set_xlabel("mean latency, batch 1, / static model's")
        ax.set_ylabel("accuracy (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    save(fig, path)
    return True
