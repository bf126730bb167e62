"""The thermal and battery tests' picture: readings, the chosen operating point and latency
on one time axis."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from calibration.plots import pyplot, save
from edge.governor import Rung


def plot_timeline(rows: list[dict[str, Any]], rungs: Sequence[Rung], summary: dict[str, Any], path: Path) -> None:
    plt = pyplot()
    t = [r["time"] for r in rows]
    fig, (temp_ax, level_ax, lat_ax) = plt.subplots(3, 1, figsize=(11, 8.5), sharex=True, gridspec_kw={"height_ratios": [2, 1.3, 2]})
    temp_ax.plot(t, [r["temperature_c"] for r in rows], color="tab:red", label="temperature (C)")
    temp_ax.plot(t, [r["soft_c"] for r in rows], color="tab:red", linestyle=":", linewidth=0.8, label="soft limit")
    temp_ax.plot(t, [r["hard_c"] for r in rows], color="darkred", linestyle="--", linewidth=0.8, label="hard limit")
    temp_ax.set_ylabel("deg C")
    other = temp_ax.twinx()
    if any(r["battery_percent"] is not None for r in rows):
        other.plot(t, [r["battery_percent"] for r in rows], color="tab:green", label="battery (%)")
        other.set_ylabel("battery %")
    else:
        other.plot(t, [r["power_mw"] for r in rows], color="tab:purple", alpha=0.5, linestyle="--", linewidth=0.8, label="power (mW)")
        other.set_ylabel("mW")
    lines = temp_ax.get_legend_handles_labels()[0] + other.get_legend_handles_labels()[0]
    temp_ax.legend(lines, [line.get_label() for line in lines], fontsize=7, loc="upper left")
    temp_ax.set_title(f"{summary['scenario']} test: readings, operating point, latency ({summary['emulation'].split(':')[0]})")
    level_ax.step(t, [r["level"] for r in rows], where="post", color="tab:blue")
    level_ax.set_yticks(range(len(rungs)), [r.point for r in rungs], fontsize=7)
    level_ax.invert_yaxis()
    level_ax.set_ylabel("operating point")
    lat_ax.plot(t, [r["latency_ms"] for r in rows], color="tab:blue", label=f"governed ({summary['misses']} misses, {summary['accuracy']:.1%})")
    if "static" in summary:
        st = summary["static"]
        lat_ax.plot(t, [r["static_latency_ms"] for r in rows], color="black", alpha=0.7, label=f"static model ({st['misses']} misses, {st['accuracy']:.1%})")
    lat_ax.axhline(summary["latency_objective_ms"], color="grey", linestyle="--", label="latency objective")
    lat_ax.set_ylabel("mean latency per tick (ms)")
    lat_ax.set_xlabel("time (s)")
    lat_ax.legend(fontsize=7, loc="upper left")
    for ax in (temp_ax, level_ax, lat_ax):
        ax.grid(alpha=0.3)
    save(fig, path)
