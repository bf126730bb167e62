"""Per-input depth (and width) against every fixed configuration: accuracy vs measured latency."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save
from edge.frontier import pareto_front


def plot_frontiers(reports: dict[str, dict[str, Any]], path: Path) -> None:
    """One panel per report: fixed configurations as grey dots with their frontier, the
    per-input points as a line per starting configuration."""
    plt = pyplot()
    fig, axes = plt.subplots(1, len(reports), figsize=(7.5 * len(reports), 5), squeeze=False)
    for ax, (title, report) in zip(axes[0], reports.items()):
        rows = report["points"]
        fixed = {n: r for n, r in rows.items() if r["shares"] is None}
        for name, r in fixed.items():
            ax.scatter(r["mean_ms"], 100 * r["accuracy"], color="grey", s=18)
            ax.annotate(name.removeprefix("fixed-"), (r["mean_ms"], 100 * r["accuracy"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
        front = sorted(((r["mean_ms"], 100 * r["accuracy"]) for n, r in fixed.items() if n in _fixed_front(fixed)))
        ax.step([f[0] for f in front], [f[1] for f in front], where="post", color="grey", linewidth=1, label="best fixed configuration")
        for depth in dict.fromkeys(r["depth"] for r in rows.values() if r["shares"] is not None):
            routed = sorted((r["mean_ms"], 100 * r["accuracy"]) for r in rows.values() if r["shares"] is not None and r["depth"] == depth)
            ax.plot([p[0] for p in routed], [p[1] for p in routed], marker="o", markersize=4, label=f"per-input {depth}")
        ax.set_xlabel("mean latency per image, batch 1 (ms)")
        ax.set_ylabel("accuracy (%)")
        ax.set_title(f"{title}: {report['dataset']}, {report['test_samples']} test images")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save(fig, path)


def _fixed_front(fixed: dict[str, dict[str, Any]]) -> set[str]:
    return set(pareto_front(list(fixed), lambda n: fixed[n]["mean_ms"], lambda n: fixed[n]["accuracy"]))
