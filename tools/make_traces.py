"""make-traces: write the sample sensor traces shipped in traces/ (deterministic).

    python -m tools.make_traces --out traces

thermal_ramp.csv       10 minutes, mains power: idle at 45 C, a load ramp past the
                       passive trip (80 C) and the hot trip (92 C), a hold, then cooling;
                       the sensor drops out for 8 s at t = 470 s (no rows: it goes stale)
battery_discharge.csv  15 minutes on battery: 100% to 5%, warm but under the trips; the
                       OS drops to its 7W power mode below 15%, as Jetson images do
Both carry the board's trip points (trip.tj.*), total and per-rail power and nvpmodel.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

from edge.sensors.base import Reading
from edge.sensors.replay import write_trace

TRIPS = {"tj": {"passive": 80.0, "hot": 92.0, "critical": 100.0}}


def thermal_ramp() -> list[Reading]:
    readings = []
    for t in range(0, 601):
        if 470 <= t < 478:
            continue  # a sensor dropout
        if t < 60:
            base = 45.0
        elif t < 300:
            base = 45.0 + (t - 60) / 240 * 52.0  # up to 97 C
        elif t < 360:
            base = 97.0
        else:
            base = max(50.0, 97.0 - (t - 360) / 200 * 47.0)
        tj = base + 0.6 * math.sin(t / 7.0)  # sensor ripple: exercises the hysteresis
        power = 4000.0 + 60.0 * (tj - 45.0)
        rails = {"VDD_IN": power, "VDD_CPU_GPU_CV": 0.55 * power, "VDD_SOC": 0.2 * power}
        readings.append(Reading(
            float(t), "trace", {"tj": round(tj, 2), "cpu": round(tj - 2.0, 2), "gpu": round(tj - 1.0, 2)}, TRIPS,
            round(power, 1), {k: round(v, 1) for k, v in rails.items()}, nvpmodel="15W",
        ))
    return readings


def battery_discharge() -> list[Reading]:
    readings = []
    for t in range(0, 901):
        percent = 100.0 - 95.0 * t / 900
        tj = 55.0 + 10.0 * math.sin(t / 90.0) + 0.5 * math.sin(t / 5.0)
        power = 6500.0 + 40.0 * (tj - 55.0)
        readings.append(Reading(
            float(t), "trace", {"tj": round(tj, 2)}, TRIPS, round(power, 1), {"VDD_IN": round(power, 1)},
            round(percent, 2), False, "7W" if percent < 15.0 else "15W",
        ))
    return readings


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="make-traces", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("traces"))
    args = p.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    write_trace(args.out / "thermal_ramp.csv", thermal_ramp())
    write_trace(args.out / "battery_discharge.csv", battery_discharge())
    print(f"wrote {args.out / 'thermal_ramp.csv'} and {args.out / 'battery_discharge.csv'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
