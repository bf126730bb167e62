"""edged's metrics registry (prometheus-client underneath): series replaced as a set."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from edge.daemon.metrics import Registry


def series(registry: Registry, name: str) -> dict[frozenset[tuple[str, str]], float]:
    text = registry.render().decode()
    return {frozenset(s.labels.items()): s.value for f in text_string_to_metric_families(text) for s in f.samples if s.name == name}


def test_a_models_operating_point_replaces_its_last_one_and_leaves_other_models_alone() -> None:
    r = Registry()
    r.operating_point.replace([({"model": "a", "point": "full"}, 1.0)], model="a")
    r.operating_point.replace([({"model": "b", "point": "eager"}, 1.0)], model="b")
    r.operating_point.replace([({"model": "a", "point": "eager"}, 1.0)], model="a")
    assert series(r, "edge_operating_point") == {
        frozenset({("model", "a"), ("point", "eager")}): 1.0, frozenset({("model", "b"), ("point", "eager")}): 1.0,
    }


def test_a_temperature_zone_that_vanishes_from_the_reading_vanishes_from_the_metrics() -> None:
    r = Registry()
    r.temperature.replace([({"zone": "cpu"}, 50.0), ({"zone": "gpu"}, 55.5)])
    r.temperature.replace([({"zone": "cpu"}, 51.0)])
    assert series(r, "edge_sensor_temperature_celsius") == {frozenset({("zone", "cpu")}): 51.0}


def test_two_daemons_in_one_process_count_apart() -> None:
    one, two = Registry(), Registry()
    one.requests.labels(code="200", model="m").inc()
    assert series(one, "edge_requests_total") == {frozenset({("code", "200"), ("model", "m")}): 1.0}
    assert series(two, "edge_requests_total") == {}
