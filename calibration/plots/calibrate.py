"""edge-calibrate's picture: accuracy against measured batch-1 latency for every
operating point, one line per exit criterion, with the Pareto frontier over all."""

from __future__ import annotations

from operator import itemgetter
from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save
from edge.frontier import pareto_front


def plot_pareto(report: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    points = report["points"]
    chain = [p for p in points if p.get("engine", "chain") == "chain"]  # the static point is the star below
    for key in sorted({(p["criterion"], p["precision"]) for p in chain}):
        group = sorted((p for p in chain if (p["criterion"], p["precision"]) == key), key=lambda p: p["mean_ms"])
        ax.plot([p["mean_ms"] for p in group], [100 * p["accuracy"] for p in group], marker="o", alpha=0.8, label=f"{key[0]} ({key[1]})")
    front = pareto_front(points, itemgetter("mean_ms"), itemgetter("accuracy"))
    ax.plot([p["mean_ms"] for p in front], [100 * p["accuracy"] for p in front], color="black", linewidth=2, alpha=0.35, label="Pareto frontier")
    static = report.get("static")
    if static:
        ax.scatter([static["mean_ms"]], [100 * static["accuracy"]], marker="*", s=180, color="black", label="static model", zorder=3)
        ax.axhline(100 * static["accuracy"] - 0.5, color="grey", linestyle=":", label="static - 0.5 points")
    ax.set_xlabel("measured mean latency per image, batch 1 (ms)")
    ax.set_ylabel("accuracy on the test split (%)")
    ax.set_title(f"operating points, {report['data']} ({report['test_samples']} test images)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    save(fig, path)
