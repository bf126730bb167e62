"""What one benchmark run is asked to do."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class BenchConfig:
    models: list[str] = field(default_factory=lambda: ["resnet20", "resnet56", "tv_resnet18-96"])
    out: Path = Path("runs/bench")  # checkpoints and engines
    results: Path = Path("docs/results")  # bench.json, bench-summary.json, bench.png
    data: str = "fashion-mnist"
    train_only: bool = False
    max_drop: float = 0.5  # accuracy target: points below the static model on the test split
    margin: float = 0.15  # points kept in hand when choosing on the calibration split
    criterion: str = "entropy"
    cost_samples: int = 1000  # calibration images timed for the candidate costs
    rules: bool = False  # compare exit decision rules on the placed exits (after a run)
    depth_frontier: bool = False  # also the adaptive-depth version, depth and exits on one frontier
