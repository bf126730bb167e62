"""edge-intake-bench's picture: the chain at full depth over the static model, per architecture."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save


def plot_chain_costs(results: list[dict[str, Any]], path: Path) -> None:
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
