"""Latency against accuracy (edge.frontier): the one implementation the governor, the
daemon, the calibration tool and the benchmarks share."""

from __future__ import annotations

from operator import itemgetter

from edge.frontier import most_accurate_within, pareto_front

MS, ACC = itemgetter("mean_ms"), itemgetter("accuracy")


def point(name: str, mean_ms: float, accuracy: float | None) -> dict[str, object]:
    return {"name": name, "mean_ms": mean_ms, "accuracy": accuracy}


def names(points: list[dict[str, object]]) -> list[object]:
    return [p["name"] for p in points]


def test_the_front_is_cheapest_first_and_drops_what_is_slower_and_no_more_accurate() -> None:
    points = [point("a", 1.0, 0.9), point("b", 0.5, 0.85), point("c", 0.7, 0.84), point("d", 1.2, 0.9), point("e", 0.4, 0.8)]
    assert names(pareto_front(points, MS, ACC)) == ["e", "b", "a"]


def test_of_two_points_equally_fast_only_the_more_accurate_is_on_the_front() -> None:
    assert names(pareto_front([point("worse", 1.0, 0.8), point("better", 1.0, 0.9)], MS, ACC)) == ["better"]


def test_a_point_of_unknown_accuracy_stays_on_the_front() -> None:
    points = [point("fast", 0.5, 0.9), point("unknown", 0.7, None), point("slow", 1.0, 0.85)]
    assert names(pareto_front(points, MS, ACC)) == ["fast", "unknown"]


def test_within_a_budget_the_most_accurate_point_wins_and_the_faster_of_equals() -> None:
    points = [point("a", 1.0, 0.9), point("b", 0.5, 0.85), point("b2", 0.45, 0.85), point("c", 0.4, 0.8)]
    assert most_accurate_within(points, 0.6, MS, ACC)["name"] == "b2"  # type: ignore[index]
    assert most_accurate_within(points, 1.0, MS, ACC)["name"] == "a"  # type: ignore[index]
    assert most_accurate_within(points, 0.3, MS, ACC) is None
