"""Latency against accuracy, one implementation for everything that trades them: the
points nothing beats (the governor's ladder, the calibration and benchmark plots, the
depth x exits frontier) and the most accurate point within a latency budget (the
daemon's `latency_budget_ms`, `edge-calibrate --budget-ms`).

Points are any objects; the caller says how to read a point's mean latency (ms) and
accuracy (None where unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

T = TypeVar("T")
Figure = Callable[[T], float]
MaybeFigure = Callable[[T], float | None]


def pareto_front(points: Sequence[T], mean_ms: Figure[T], accuracy: MaybeFigure[T]) -> list[T]:
    """The points no other point beats on both latency (lower) and accuracy (higher),
    cheapest first. A point whose accuracy is unknown cannot be beaten, so it stays."""
    front: list[T] = []
    best = float("-inf")
    for p in sorted(points, key=lambda p: (mean_ms(p), -(accuracy(p) or 0.0))):
        a = accuracy(p)
        if a is None or a > best:
            front.append(p)
            best = best if a is None else a
    return front


def most_accurate_within(points: Sequence[T], budget_ms: float, mean_ms: Figure[T], accuracy: MaybeFigure[T]) -> T | None:
    """The most accurate point whose mean latency is at most `budget_ms` (the faster of
    equals; unknown accuracy counts as 0), or None when none fits."""
    within = [p for p in points if mean_ms(p) <= budget_ms]
    if not within:
        return None
    return max(within, key=lambda p: (accuracy(p) or 0.0, -mean_ms(p)))
