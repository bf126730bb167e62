"""edge-thermal-test / edge-battery-test: real inference under the governor while a sensor
trace replays (calibration.powertest); exits 3 when the policy was broken.

    edge-thermal-test --engines runs/quickstart/engines      # traces/thermal_ramp.csv
    edge-battery-test --engines runs/quickstart/engines      # traces/battery_discharge.csv
    edge-thermal-test --engines ... --live --duration 600    # the board's own sensors (jtop, else sysfs)
"""

from __future__ import annotations

import argparse
from pathlib import Path

from calibration.powertest import ROOT, SCENARIOS, PowerTest, print_summary, run_power_test
from edge.runtime import Runtime
from tools._cli import run_main

POLICY_BROKEN = 3


def parse_args(argv: list[str] | None, scenario: str) -> PowerTest:
    p = argparse.ArgumentParser(prog=f"edge-{scenario}-test", description=__doc__.splitlines()[0])
    p.add_argument("--engines", type=Path, default=Path("runs/quickstart/engines"), help="a manifest folder (edge-quickstart writes one)")
    p.add_argument("--trace", type=Path, default=SCENARIOS[scenario])
    p.add_argument("--policy", type=Path, default=ROOT / "policies/default.json")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--out", type=Path, default=Path(f"runs/{scenario}-test"))
    p.add_argument("--images-per-tick", type=int, default=20)
    p.add_argument("--tick-s", type=float, default=1.0)
    p.add_argument("--profile-samples", type=int, default=300, help="images to measure every operating point on first")
    p.add_argument("--objective-ms", type=float, help="latency objective (default: the policy's, else 1.3 x the static model's measured mean)")
    p.add_argument("--min-speed", type=float, default=0.5, help="emulated speed at the hard limit")
    p.add_argument("--no-emulate", action="store_true", help="report measured latency as it is")
    p.add_argument("--live", action="store_true", help="read this board's sensors (jtop, else sysfs) in real time; no emulation")
    p.add_argument("--duration", type=float, default=600.0, help="seconds, with --live")
    p.add_argument("--sysfs-root", type=Path, default=Path("/"))
    a = p.parse_args(argv)
    return PowerTest(
        scenario, a.engines, a.out, trace=a.trace, policy=a.policy, data=a.data, images_per_tick=a.images_per_tick, tick_s=a.tick_s,
        profile_samples=a.profile_samples, objective_ms=a.objective_ms, min_speed=a.min_speed, emulate=not a.no_emulate,
        live=a.live, duration_s=a.duration, sysfs_root=a.sysfs_root,
    )


def main(argv: list[str] | None, scenario: str) -> int:
    test = parse_args(argv, scenario)
    runtime = Runtime(test.engines)
    try:
        summary = run_power_test(test, runtime)
    finally:
        runtime.close()
    print_summary(summary)
    return POLICY_BROKEN if summary["violations"] else 0


def thermal_cli() -> int:
    return run_main(lambda argv: main(argv, "thermal"))


def battery_cli() -> int:
    return run_main(lambda argv: main(argv, "battery"))
