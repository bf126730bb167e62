"""Profiling through the real runtime on real engines, and the manifest's profile field."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from calibration.latency import profile_runtime
from edge.errors import ManifestError
from edge.manifest import load_manifest, save_manifest
from edge.runtime import Runtime
from tests.helpers import read_manifest_json, write_manifest_json


def test_profile_times_every_segment_with_and_without_its_exit(built_dir: Path, real_images: np.ndarray) -> None:
    runtime = Runtime(built_dir)
    profiles = profile_runtime(runtime, real_images, batch_sizes=(1, 8), calls=40, warmup=5, progress=False)
    assert sorted(profiles) == [1, 8]
    for batch, p in profiles.items():
        assert p.batch == batch and len(p.segments) == 3 and len(p.trunks) == 2
        for t in [*p.segments, *p.trunks, p.call]:
            assert 0 < t.median_ms <= t.p99_ms and t.mean_ms > 0
        assert p.model.segment_ms == [t.mean_ms for t in p.segments]
        # one call is its segments plus the measured overhead, by construction of the model
        assert p.model.predict([1, 1, 1], [-1.0, -1.0]) == pytest.approx(p.call.mean_ms, rel=1e-9)
        # every exit off runs the whole engine: its own measured call, not the trunks' sum
        assert p.model.whole_ms is not None and p.model.predict([1, 1, 1], [None, None]) == p.model.whole_ms
        assert p.model.predict([1, 1, 1], [None, -1.0]) == pytest.approx(p.model.overhead_ms + p.model.trunk_ms[0] + sum(p.model.segment_ms[1:]))
        assert type(p.model).from_dict(p.model.to_dict()) == p.model
    assert runtime.operating_point == "full"  # profiling changes nothing


def test_profile_needs_enough_images(built_dir: Path, real_images: np.ndarray) -> None:
    with pytest.raises(ValueError, match="at least 64"):
        profile_runtime(Runtime(built_dir), real_images[:10], batch_sizes=(64,), calls=2, progress=False)


def test_profile_round_trips_through_the_manifest(built_copy: Path, real_images: np.ndarray) -> None:
    manifest = load_manifest(built_copy)
    profile = profile_runtime(Runtime(manifest), real_images, calls=10, warmup=2, progress=False)[1].to_dict()
    save_manifest(dataclasses.replace(manifest, profile={"1": profile}), built_copy / "manifest.json")
    assert json.loads(json.dumps(load_manifest(built_copy).profile)) == {"1": profile}
    data = read_manifest_json(built_copy)
    data["profile"] = [1, 2]
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="profile"):
        load_manifest(built_copy)
