"""Interleaved batch-1 measurement against the real runtime and static engine."""

from __future__ import annotations

import numpy as np
import pytest

from calibration.data import Dataset
from calibration.evaluate import StaticModel, measure_interleaved, measure_throughput, runtime_config
from edge.runtime import Runtime


@pytest.fixture(scope="module")
def small_test(digits_test: Dataset) -> Dataset:
    return digits_test.subset(slice(0, 60))


def test_interleaved_measurement_matches_direct_inference(built, small_test: Dataset) -> None:
    manifest, folder = built
    runtime = Runtime(manifest)
    static = StaticModel(folder / manifest.static_model["file"])
    mixed = [1.0, 1.5]
    configs = {"static": static.config(), "full": runtime_config(runtime, [None, None]), "mixed": runtime_config(runtime, mixed)}
    measured = measure_interleaved(configs, small_test, warmup=5, progress=False)

    direct = runtime.infer(small_test.images, thresholds=mixed)
    expected_accuracy = float((direct.predictions == small_test.labels).mean())
    assert measured["mixed"].accuracy == pytest.approx(expected_accuracy)
    assert measured["mixed"].exit_fractions == pytest.approx(np.bincount(direct.exits, minlength=3) / len(small_test))
    full_probs = runtime.infer(small_test.images, thresholds=[None, None]).probabilities
    static_probs = static.predict(small_test.images)
    assert measured["static"].accuracy == pytest.approx(float((static_probs.argmax(1) == small_test.labels).mean()))
    assert measured["full"].accuracy == pytest.approx(float((full_probs.argmax(1) == small_test.labels).mean()))
    assert measured["full"].exit_fractions == [0.0, 0.0, 1.0]
    assert measured["static"].segment_ms is None


def test_segment_times_average_only_where_a_segment_ran(built, small_test: Dataset) -> None:
    manifest, _ = built
    runtime = Runtime(manifest)
    measured = measure_interleaved({"all_exit_0": runtime_config(runtime, [1e9, 1e9])}, small_test, warmup=2, progress=False)
    m = measured["all_exit_0"]
    assert m.exit_fractions == [1.0, 0.0, 0.0]
    assert m.reach_fractions == [1.0, 0.0, 0.0]
    assert m.segment_ms is not None and m.segment_ms[0] > 0 and m.segment_ms[1:] == [0.0, 0.0]
    assert m.p50_ms <= m.p99_ms and m.mean_ms > 0


def test_throughput_counts_every_sample(built, small_test: Dataset) -> None:
    seen = []
    rate = measure_throughput(lambda x: seen.append(len(x)), small_test, batch_size=16)
    assert sum(seen[1:]) == len(small_test) and seen[1:] == [16, 16, 16, 12]
    assert rate > 0
