"""The adaptive-depth report's pictures: every depth configuration (the paper's Figure 4),
and accuracy vs latency over depth x exit thresholds with its Pareto frontier."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save


def plot_depths(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    rows = report["depths"]
    names = list(rows)
    fig, (acc_ax, ms_ax) = plt.subplots(1, 2, figsize=(12, 4.5))
    colors = ["black" if n == "static" else "tab:blue" if n == report["super_depth"] else "tab:orange" if n == report["base_depth"] else "tab:grey" for n in names]
    accuracies = [100 * rows[n]["accuracy"] for n in names]
    acc_ax.bar(names, accuracies, color=colors)
    low = min(accuracies)
    acc_ax.set_ylim(max(0.0, low - 3), min(100.0, max(accuracies) + 1))
    acc_ax.set_ylabel("accuracy (%)")
    ms_ax.bar(names, [rows[n]["mean_ms"] for n in names], color=colors)
    ms_ax.set_ylabel("mean latency per image, batch 1 (ms)")
    for ax in (acc_ax, ms_ax):
        ax.set_xlabel("depth configuration (T = stage's skippable half skipped)")
        ax.tick_params(axis="x", rotation=45)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(f"{report['checkpoint']} on {report['dataset']} ({report['table_samples']} test images, exits off)")
    save(fig, path)


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 5))
    for depth in dict.fromkeys(p["depth"] for p in report["sweep"]):
        points = sorted((p for p in report["sweep"] if p["depth"] == depth), key=lambda p: p["mean_ms"])
        ax.plot([p["mean_ms"] for p in points], [100 * p["accuracy"] for p in points], marker="o", markersize=3, linewidth=0.8, alpha=0.7, label=depth)
    front = report["pareto"]
    ax.plot([p["mean_ms"] for p in front], [100 * p["accuracy"] for p in front], color="black", linewidth=2, label="Pareto frontier")
    static = report.get("sweep_static")
    if static is not None:
        ax.scatter([static["mean_ms"]], [100 * static["accuracy"]], marker="*", s=160, color="black", label="static model", zorder=3)
    ax.set_xlabel("mean latency per image, batch 1 (ms)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"depth x entropy threshold ({report['sweep_samples']} test images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    save(fig, path)
