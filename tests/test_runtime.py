"""edge.runtime: early exit that really stops, checked against an independent reference.

The reference runs every ONNX segment itself on the whole batch (no compaction) and
decides each sample's exit with a plain Python loop: the first exit k whose entropy is
<= threshold k, else the final one.
"""

from __future__ import annotations

import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from edge.atomic import sha256_file
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.errors import InputError, ManifestError
from edge.runtime import InferenceResult, Runtime
from tests.helpers import INPUT_SHAPE, MAX_BATCH, read_manifest_json, reference_session, run_named, write_manifest_json

FINAL = 2


class Reference:
    """Every exit's probabilities and entropies for every sample, from plain sessions."""

    def __init__(self, manifest, folder: Path) -> None:
        self.segments = manifest.segments
        self.sessions = [reference_session(folder / s.file) for s in manifest.segments]

    def run(self, x: np.ndarray) -> tuple[list[np.ndarray], list[np.ndarray], list[np.ndarray]]:
        probs, entropies, features = [], [], []
        feed = x
        for info, session in zip(self.segments, self.sessions):
            out = run_named(session, feed)
            probs.append(out[info.probs_output])
            entropies.append(out[info.score_output])
            if info.features_output:
                feed = out[info.features_output]
                features.append(feed)
        return probs, entropies, features

    def expect(self, x: np.ndarray, thresholds) -> tuple[np.ndarray, np.ndarray]:
        """(exits, probabilities) the runtime should return for `x`."""
        probs, entropies, _ = self.run(x)
        exits = []
        for i in range(len(x)):
            taken = FINAL
            for k, limit in enumerate(thresholds):
                if limit is not None and float(entropies[k][i]) <= limit:
                    taken = k
                    break
            exits.append(taken)
        exits = np.array(exits)
        chosen = np.stack([probs[e][i] for i, e in enumerate(exits)])
        return exits, chosen


def threshold_between(values: np.ndarray, quantile: float, margin: float = 1e-4) -> float:
    """A threshold near `quantile` of `values` that no value lies within `margin` of."""
    v = np.unique(values.astype(np.float64))
    gaps = np.flatnonzero(np.diff(v) > 2 * margin)
    assert len(gaps), "no usable gap between entropies"
    i = gaps[np.argmin(np.abs(gaps - quantile * (len(v) - 1)))]
    return float((v[i] + v[i + 1]) / 2)


def mixed_thresholds(reference: Reference, x: np.ndarray, q0: float = 0.3, q1: float = 0.5) -> list[float]:
    """Thresholds from the real entropies so that every exit takes some samples."""
    _, entropies, _ = reference.run(x)
    t0 = threshold_between(entropies[0], q0)
    stay = entropies[0] > t0
    t1 = threshold_between(entropies[1][stay], q1)
    return [t0, t1]


@pytest.fixture(scope="module")
def runtime(built_dir: Path):
    rt = Runtime(built_dir)
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def reference(built) -> Reference:
    return Reference(*built)


@pytest.fixture(scope="module", params=["real", "random"])
def images(request, real_images, random_images) -> np.ndarray:
    return real_images if request.param == "real" else random_images


def check_against_reference(result: InferenceResult, reference: Reference, x: np.ndarray, thresholds) -> np.ndarray:
    exits, probs = reference.expect(x, thresholds)
    assert result.exits.shape == result.predictions.shape == (len(x),)
    assert result.probabilities.shape == (len(x), 10) and result.probabilities.dtype == np.float32
    np.testing.assert_array_equal(result.exits, exits)
    np.testing.assert_allclose(result.probabilities, probs, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.predictions, probs.argmax(axis=1))
    np.testing.assert_array_equal(result.predictions, result.probabilities.argmax(axis=1))
    return exits


SETTINGS = {
    "never": lambda ref, x: [None, None],
    "zero": lambda ref, x: [0.0, 0.0],
    "always_at_0": lambda ref, x: [1e9, 1e9],
    "only_exit_1": lambda ref, x: [None, 1e9],
    "mixed": lambda ref, x: mixed_thresholds(ref, x),
    "mixed_low": lambda ref, x: mixed_thresholds(ref, x, 0.1, 0.8),
    "skip_exit_0": lambda ref, x: [None, threshold_between(ref.run(x)[1][1], 0.4)],
}
EXPECTED_EXITS = {"never": {2}, "zero": {2}, "always_at_0": {0}, "only_exit_1": {1},
                  "mixed": {0, 1, 2}, "mixed_low": {0, 1, 2}, "skip_exit_0": {1, 2}}


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_batch_matches_reference(runtime: Runtime, reference: Reference, images: np.ndarray, setting: str) -> None:
    thresholds = SETTINGS[setting](reference, images)
    result = runtime.infer(images, thresholds=thresholds)
    exits = check_against_reference(result, reference, images, thresholds)
    assert set(exits.tolist()) == EXPECTED_EXITS[setting]
    assert result.operating_point == "custom"
    assert len(result.segment_ms) == 3 and result.total_ms >= sum(result.segment_ms) * 0.99


def test_results_come_back_in_input_order(runtime: Runtime, reference: Reference, real_images: np.ndarray) -> None:
    thresholds = mixed_thresholds(reference, real_images)
    forward = runtime.infer(real_images, thresholds=thresholds)
    order = np.random.default_rng(2).permutation(len(real_images))
    shuffled = runtime.infer(np.ascontiguousarray(real_images[order]), thresholds=thresholds)
    # Early exits are interleaved with later ones in the input, not grouped.
    assert len(np.unique(forward.exits[:16])) == 3
    np.testing.assert_array_equal(shuffled.exits, forward.exits[order])
    np.testing.assert_array_equal(shuffled.predictions, forward.predictions[order])
    np.testing.assert_allclose(shuffled.probabilities, forward.probabilities[order], rtol=0, atol=1e-5)


@pytest.mark.parametrize("setting", ["mixed", "never", "always_at_0", "skip_exit_0"])
def test_batch_of_one_agrees_with_batch(runtime: Runtime, reference: Reference, real_images: np.ndarray, setting) -> None:
    thresholds = SETTINGS[setting](reference, real_images)
    batch = runtime.infer(real_images, thresholds=thresholds)
    for i in range(0, len(real_images), 3):
        one = runtime.infer(np.ascontiguousarray(real_images[i : i + 1]), thresholds=thresholds)
        assert one.exits.shape == one.predictions.shape == (1,) and one.probabilities.shape == (1, 10)
        assert one.exits[0] == batch.exits[i], f"sample {i}"
        assert one.predictions[0] == batch.predictions[i]
        np.testing.assert_allclose(one.probabilities[0], batch.probabilities[i], rtol=0, atol=1e-5)
        executed = [ms > 0 for ms in one.segment_ms]
        # every exit off: the whole engine, one call, its time in the final slot
        expected = [False, False, True] if setting == "never" else [k <= one.exits[0] for k in range(3)]
        assert executed == expected, f"sample {i}: {one.segment_ms}"


def test_every_exit_off_runs_the_whole_engine_equal_to_the_chain(runtime: Runtime, real_images: np.ndarray) -> None:
    assert runtime.has_whole  # built without a separate static backbone: the static file is the whole engine
    whole = runtime.infer(real_images, thresholds=[None, None])
    chain = runtime.infer(real_images, thresholds=[None, None], whole=False)
    np.testing.assert_allclose(whole.probabilities, chain.probabilities, rtol=0, atol=1e-5)
    assert (whole.exits == 2).all() and (chain.exits == 2).all()
    one = runtime.infer(np.ascontiguousarray(real_images[:1]), thresholds=[None, None])
    assert one.segment_ms[:2] == [0.0, 0.0] and one.segment_ms[2] > 0
    through = runtime.infer(np.ascontiguousarray(real_images[:1]), thresholds=[None, None], whole=False)
    assert all(ms > 0 for ms in through.segment_ms)
    # an exit on, or a custom point of the same thresholds: the chain decides
    assert runtime.infer(np.ascontiguousarray(real_images[:1]), thresholds=[None, 1e9]).exits[0] == 1


def test_a_fine_tuned_chain_gets_its_own_whole_engine(net, digits_test, tmp_path: Path) -> None:
    import copy

    import torch

    from engines.build import BuildOptions, build_engines

    static = copy.deepcopy(net.backbone)
    with torch.no_grad():
        static.head[-1].bias.add_(1.0)  # another network than the chain's
    manifest = build_engines(net, tmp_path, digits_test.classes, digits_test.images[:16], options=BuildOptions(name="w"), static_backbone=static)
    assert manifest.whole_model is not None and manifest.whole_model["file"] == "whole.onnx"
    assert manifest.whole_model != manifest.static_model
    runtime = Runtime(tmp_path)
    x = np.ascontiguousarray(digits_test.images[:8])
    whole = runtime.infer(x, thresholds=[None, None])
    np.testing.assert_allclose(whole.probabilities, runtime.infer(x, thresholds=[None, None], whole=False).probabilities, rtol=0, atol=1e-5)
    (tmp_path / "whole.onnx").write_bytes((tmp_path / "whole.onnx").read_bytes()[:-8])
    with pytest.raises(ManifestError, match="whole.onnx"):
        Runtime(tmp_path)  # its checksum no longer matches
    # a file that matches its checksum but onnxruntime cannot load: the sessions opened so far close
    data = read_manifest_json(tmp_path)
    data["whole_model"]["sha256"] = sha256_file(tmp_path / "whole.onnx")
    write_manifest_json(tmp_path, data)
    closed = []

    class Counting(OnnxRuntimeBackend):
        def close(self) -> None:
            closed.append(self)
            super().close()

    with pytest.raises(ManifestError, match="whole.onnx"):
        Runtime(tmp_path, backend=Counting())
    assert closed, "the segments' sessions stay open after the whole engine failed to load"


def test_a_frozen_copy_of_the_static_backbone_shares_its_engine(net, digits_test, tmp_path: Path) -> None:
    """Exits trained on a frozen copy: the chain's network is the static one, so one file
    (and one session) serves both."""
    import copy

    from engines.build import BuildOptions, build_engines

    manifest = build_engines(
        net, tmp_path, digits_test.classes, digits_test.images[:16], options=BuildOptions(name="w"), static_backbone=copy.deepcopy(net.backbone),
    )
    assert manifest.whole_model == manifest.static_model and not (tmp_path / "whole.onnx").exists()
    runtime = Runtime(tmp_path)
    x = np.ascontiguousarray(digits_test.images[:8])
    whole = runtime.infer(x, thresholds=[None, None])
    assert runtime.has_whole and whole.segment_ms[:2] == [0.0, 0.0]
    np.testing.assert_allclose(whole.probabilities, runtime.infer(x, thresholds=[None, None], whole=False).probabilities, rtol=0, atol=1e-5)


def test_threshold_comparison_is_inclusive(runtime: Runtime, real_images: np.ndarray) -> None:
    """An entropy exactly at the threshold exits; one ulp below the entropy does not."""
    x = np.ascontiguousarray(real_images[5:6])
    entropy = float(runtime.backend.run(0, runtime.backend.upload(x)).scores[0])
    assert runtime.infer(x, thresholds=[entropy, None]).exits[0] == 0
    below = float(np.nextafter(entropy, -np.inf))
    assert runtime.infer(x, thresholds=[below, None]).exits[0] == FINAL
    # The same rule on the batch path.
    scores = runtime.backend.run(0, runtime.backend.upload(real_images)).scores
    j = int(np.argsort(scores)[len(scores) // 2])
    result = runtime.infer(real_images, thresholds=[float(scores[j]), None])
    np.testing.assert_array_equal(result.exits == 0, scores <= scores[j])
    assert result.exits[j] == 0


def test_final_exit_is_the_backbone_softmax(runtime: Runtime, net, real_images: np.ndarray) -> None:
    import torch

    with torch.no_grad():
        expected = torch.softmax(net.backbone(torch.from_numpy(real_images)).double(), dim=1).numpy()
    result = runtime.infer(real_images, thresholds=[None, None])
    assert np.all(result.exits == FINAL)
    assert np.max(np.abs(result.probabilities - expected)) <= 1e-4


class RecordingBackend(OnnxRuntimeBackend):
    """The real backend, noting what each segment is given."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[int, np.ndarray]] = []

    def run(self, index, features, criterion="entropy"):
        self.calls.append((index, np.array(features, copy=True)))
        return super().run(index, features, criterion)

    def advance(self, index, features):
        self.calls.append((-1 - index, np.array(features, copy=True)))  # negative: exit off
        return super().advance(index, features)


def test_later_segments_run_only_on_samples_still_in_the_batch(built_dir, reference: Reference, real_images) -> None:
    backend = RecordingBackend()
    rt = Runtime(built_dir, backend=backend)
    thresholds = mixed_thresholds(reference, real_images)
    result = rt.infer(real_images, thresholds=thresholds)
    exits, _ = reference.expect(real_images, thresholds)
    _, _, features = reference.run(real_images)
    assert [index for index, _ in backend.calls] == [0, 1, 2]
    fed = [f for _, f in backend.calls]
    assert len(fed[0]) == MAX_BATCH
    for k in (1, 2):
        rows = np.flatnonzero(exits >= k)
        assert 0 < len(rows) < MAX_BATCH
        assert len(fed[k]) == len(rows), f"segment {k} ran on {len(fed[k])} samples, {len(rows)} left"
        np.testing.assert_allclose(fed[k], features[k - 1][rows], rtol=0, atol=1e-5)
    np.testing.assert_array_equal(result.exits, exits)

    backend.calls.clear()
    everything_exits = rt.infer(real_images, thresholds=[1e9, 1e9])
    assert [index for index, _ in backend.calls] == [0]
    assert np.all(everything_exits.exits == 0)


@pytest.mark.parametrize("batch", [1, 7])
def test_switched_off_exits_are_not_computed(built_dir, reference: Reference, real_images, batch: int) -> None:
    backend = RecordingBackend()
    rt = Runtime(built_dir, backend=backend)
    x = np.ascontiguousarray(real_images[:batch])
    thresholds = [None, threshold_between(reference.run(real_images)[1][1], 0.5)]
    result = rt.infer(x, thresholds=thresholds)
    exits, probs = reference.expect(x, thresholds)
    assert [index for index, _ in backend.calls][:2] == [-1, 1]  # segment 0 ran as a trunk
    np.testing.assert_array_equal(result.exits, exits)
    np.testing.assert_allclose(result.probabilities, probs, rtol=0, atol=1e-5)
    backend.calls.clear()
    rt.infer(x, thresholds=[None, None], whole=False)
    assert [index for index, _ in backend.calls] == [-1, -2, 2]
    backend.calls.clear()
    rt.infer(x, thresholds=[None, None])  # the whole engine: no segment at all
    assert backend.calls == []


@pytest.mark.parametrize("batch", [1, 7])
def test_exit_at_zero_really_stops(runtime: Runtime, reference: Reference, real_images, batch: int) -> None:
    x = np.ascontiguousarray(real_images[:batch])
    result = runtime.infer(x, thresholds=[1e9, 1e9])
    assert np.all(result.exits == 0)
    assert result.segment_ms[0] > 0.0
    assert result.segment_ms[1:] == [0.0, 0.0]
    np.testing.assert_allclose(result.probabilities, reference.run(x)[0][0], rtol=0, atol=1e-5)
    late = runtime.infer(x, thresholds=[None, 1e9])
    assert late.segment_ms[0] > 0.0 and late.segment_ms[1] > 0.0 and late.segment_ms[2] == 0.0
    full = runtime.infer(x, thresholds=[None, None], whole=False)
    assert all(ms > 0.0 for ms in full.segment_ms)


def test_operating_points(built_dir: Path, real_images: np.ndarray) -> None:
    rt = Runtime(built_dir)
    assert rt.operating_point == "full" and rt.num_exits == 3
    expected = {"full": FINAL, "eager": 0, "late": 1}
    for name in ("eager", "late", "full", "eager"):
        rt.set_operating_point(name)
        assert rt.operating_point == name
        for x in (real_images[:9], real_images[9:10]):
            result = rt.infer(np.ascontiguousarray(x))
            assert result.operating_point == name
            assert np.all(result.exits == expected[name]), name
    # Custom thresholds apply to one call and leave the point alone.
    custom = rt.infer(real_images[:4], thresholds=[None, None])
    assert custom.operating_point == "custom" and np.all(custom.exits == FINAL)
    assert rt.operating_point == "eager" and np.all(rt.infer(real_images[:4]).exits == 0)
    with pytest.raises(ManifestError, match="no operating point 'turbo'"):
        rt.set_operating_point("turbo")
    assert rt.operating_point == "eager"
    started_late = Runtime(built_dir, operating_point="late")
    assert started_late.operating_point == "late" and np.all(started_late.infer(real_images[:5]).exits == 1)
    with pytest.raises(ManifestError, match="no operating point 'turbo'"):
        Runtime(built_dir, operating_point="turbo")


def test_runtime_accepts_a_loaded_manifest(built, real_images: np.ndarray) -> None:
    manifest, _ = built
    rt = Runtime(manifest)
    assert np.all(rt.infer(real_images[:3]).exits == FINAL)


@pytest.mark.parametrize("thresholds", [[1.0], [1.0, 1.0, 1.0], []])
def test_wrong_threshold_count(runtime: Runtime, real_images, thresholds) -> None:
    for x in (real_images[:1], real_images[:4]):
        with pytest.raises(InputError, match=rf"need 2 thresholds .*got {len(thresholds)}"):
            runtime.infer(np.ascontiguousarray(x), thresholds=thresholds)


def _bad_inputs() -> dict[str, tuple[object, str]]:
    good = np.random.default_rng(0).random((4, *INPUT_SHAPE), dtype=np.float32)
    return {
        "float64": (good.astype(np.float64), "dtype must be float32.*float64"),
        "uint8": ((good * 255).astype(np.uint8), "dtype must be float32"),
        "channels": (np.zeros((4, 3, 8, 8), np.float32), r"shape must be \('n', 1, 8, 8\), got \(4, 3, 8, 8\)"),
        "height": (np.zeros((4, 1, 9, 8), np.float32), r"shape must be .*got \(4, 1, 9, 8\)"),
        "width": (np.zeros((4, 1, 8, 28), np.float32), r"shape must be .*got \(4, 1, 8, 28\)"),
        "three_d": (np.zeros((1, 8, 8), np.float32), r"shape must be .*got \(1, 8, 8\)"),
        "five_d": (np.zeros((1, 1, 1, 8, 8), np.float32), "shape must be"),
        "empty": (np.zeros((0, *INPUT_SHAPE), np.float32), "^input batch is empty$"),
        "list": (good.tolist(), "numpy array, got list"),
        "tensor_like": (memoryview(good), "numpy array"),
        "fortran_order": (np.asfortranarray(good), r"^input must be C-contiguous \(use np.ascontiguousarray\)$"),
        "strided_at_the_largest_batch": (np.zeros((2 * MAX_BATCH, *INPUT_SHAPE), np.float32)[::2], "C-contiguous"),
        "every_other_column": (np.zeros((4, 1, 8, 16), np.float32)[..., ::2], "C-contiguous"),
        "strided": (np.zeros((8, *INPUT_SHAPE), np.float32)[::2], "C-contiguous"),
        "too_big": (np.zeros((MAX_BATCH + 1, *INPUT_SHAPE), np.float32), f"{MAX_BATCH + 1} exceeds .*maximum batch {MAX_BATCH}"),
    }


@pytest.mark.parametrize("case", sorted(_bad_inputs()))
def test_bad_inputs_raise_input_error(runtime: Runtime, case: str) -> None:
    images, message = _bad_inputs()[case]
    with pytest.raises(InputError, match=message):
        runtime.infer(images)
    with pytest.raises(InputError, match=message):
        runtime.check_input(images)


def test_largest_allowed_batch_and_runtime_still_works_after_errors(runtime: Runtime, reference, real_images) -> None:
    with pytest.raises(InputError):
        runtime.infer(real_images.astype(np.float64))
    result = runtime.infer(real_images, thresholds=[None, None])  # exactly the maximum
    check_against_reference(result, reference, real_images, [None, None])


def test_concurrent_calls_match_sequential(runtime: Runtime, reference: Reference, real_images, random_images) -> None:
    jobs = [
        (np.ascontiguousarray(real_images[:20]), mixed_thresholds(reference, real_images[:20])),
        (np.ascontiguousarray(real_images[20:50]), [None, None]),
        (np.ascontiguousarray(random_images[:17]), mixed_thresholds(reference, random_images[:17], 0.5, 0.5)),
        (np.ascontiguousarray(real_images[50:51]), [1e9, None]),
    ]
    expected = [runtime.infer(x, thresholds=t) for x, t in jobs]
    rounds = 8
    results: list[list[InferenceResult]] = [[] for _ in jobs]
    errors: list[BaseException] = []
    barrier = threading.Barrier(len(jobs))

    def work(j: int) -> None:
        try:
            x, t = jobs[j]
            barrier.wait(timeout=30)
            for _ in range(rounds):
                results[j].append(runtime.infer(x, thresholds=t))
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(j,)) for j in range(len(jobs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    for j, (want, got) in enumerate(zip(expected, results)):
        assert len(got) == rounds
        for result in got:
            np.testing.assert_array_equal(result.exits, want.exits, err_msg=f"job {j}")
            np.testing.assert_array_equal(result.predictions, want.predictions, err_msg=f"job {j}")
            np.testing.assert_allclose(result.probabilities, want.probabilities, rtol=0, atol=1e-6)


def test_operating_point_switch_during_concurrent_calls(built_dir: Path, real_images) -> None:
    """Every result is wholly one point's: its exits match the point it reports."""
    rt = Runtime(built_dir)
    expected = {"full": FINAL, "eager": 0, "late": 1}
    results: list[InferenceResult] = []
    errors: list[BaseException] = []
    stop = threading.Event()

    def infer() -> None:
        try:
            while not stop.is_set():
                results.append(rt.infer(real_images[:8]))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=infer) for _ in range(2)]
    for thread in threads:
        thread.start()
    try:
        for name in ["eager", "late", "full"] * 3:
            rt.set_operating_point(name)
            seen = len(results)
            deadline = time.monotonic() + 20
            # Wait for a call that started after the switch (one in flight may still be older).
            while not any(r.operating_point == name for r in results[seen + 2 :]) and time.monotonic() < deadline:
                time.sleep(0.001)
    finally:
        stop.set()
    for thread in threads:
        thread.join(timeout=30)
    assert not errors, errors
    assert {r.operating_point for r in results} == {"full", "eager", "late"}
    for result in results:
        assert np.all(result.exits == expected[result.operating_point])


def test_runtime_does_not_import_torch(built_dir: Path) -> None:
    code = (
        "import sys, numpy as np\n"
        "from edge.runtime import Runtime\n"
        f"rt = Runtime({str(built_dir)!r})\n"
        f"r = rt.infer(np.random.default_rng(0).random((3, {', '.join(map(str, INPUT_SHAPE))}), dtype=np.float32))\n"
        "assert r.probabilities.shape == (3, 10)\n"
        "print('torch' in sys.modules)\n"
    )
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_a_static_point_runs_the_static_engine_and_a_backend_without_one_starts_elsewhere(built_copy: Path, real_images: np.ndarray) -> None:
    import dataclasses

    from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
    from edge.errors import BackendError, ManifestError
    from edge.governor import ladder
    from edge.manifest import SCHEMA_VERSION, STATIC, OperatingPoint, load_manifest, save_manifest

    manifest = load_manifest(built_copy)
    early = manifest.num_exits - 1
    static = OperatingPoint("static", [None] * early, measured={"mean_ms": 0.05, "accuracy": 0.9}, engine=STATIC)
    chain = [dataclasses.replace(p, measured={"mean_ms": 0.1 + k, "accuracy": 0.9}) for k, p in enumerate(manifest.operating_points)]
    save_manifest(dataclasses.replace(manifest, operating_points=[*chain, static], default_operating_point="static"), built_copy / "manifest.json")
    manifest = load_manifest(built_copy)
    assert manifest.schema_version == SCHEMA_VERSION and manifest.point("static").engine == STATIC

    runtime = Runtime(manifest)
    result = runtime.infer(real_images[:5])
    full = runtime.infer(real_images[:5], thresholds=[None] * early)
    np.testing.assert_allclose(result.probabilities, full.probabilities, atol=1e-5)  # the same network, one engine
    assert runtime.operating_point == "static" and (result.exits == early).all() and result.segment_ms[0] == 0.0
    assert [r.point for r in ladder(manifest, runnable=runtime.runnable_points())][-1] == "static"  # the cheapest rung
    runtime.close()

    class NoStatic(OnnxRuntimeBackend):  # a backend that has no static engine (as TensorRT today)
        def load_static(self, manifest):  # type: ignore[no-untyped-def]
            raise BackendError("no static engine here")

    other = Runtime(manifest, backend=NoStatic())
    assert other.operating_point == chain[0].name and "static" not in other.runnable_points()  # the fastest chain point
    with pytest.raises(ManifestError, match="runs the static engine: no static engine here"):
        other.set_operating_point("static")
    other.close()


def test_a_static_point_with_thresholds_or_in_an_old_manifest_is_refused(built_copy: Path) -> None:
    from edge.errors import ManifestError
    from edge.manifest import load_manifest
    from tests.helpers import read_manifest_json, write_manifest_json

    data = read_manifest_json(built_copy)
    early = len(data["segments"]) - 1
    data["operating_points"].append({"name": "static", "thresholds": [0.5] + [None] * (early - 1), "engine": "static"})
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="static operating point 'static' can have no thresholds"):
        load_manifest(built_copy)
    data["operating_points"][-1]["thresholds"] = [None] * early
    data["schema_version"] = 3
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="static operating points need schema version 4"):
        load_manifest(built_copy)


def test_a_call_can_name_another_point_or_criterion_and_says_which_ran(built_dir: Path, reference: Reference, real_images: np.ndarray) -> None:
    runtime = Runtime(built_dir, operating_point="full")
    late = runtime.infer(real_images, point_name="late")
    assert late.operating_point == "late" and runtime.operating_point == "full"
    check_against_reference(late, reference, real_images, [None, 1e9])
    assert runtime.infer(real_images, point_name="full").operating_point == "full"
    with pytest.raises(InputError, match="nope"):
        runtime.infer(real_images, point_name="nope")
    lacking = ", ".join(s.name for s in runtime.manifest.segments[:-1])  # both early segments, in order
    with pytest.raises(InputError, match=re.escape(f"criterion 'bogus' is not in the engines ({lacking} lack it)")):
        runtime.infer(real_images, thresholds=[0.5, 0.5], criterion="bogus")
    assert runtime.infer(real_images, thresholds=[0.5, 0.5], criterion="entropy").operating_point == "custom"
    assert runtime.infer(real_images, criterion="maxprob").operating_point == "custom"


@pytest.mark.parametrize("batch", [1, MAX_BATCH])
def test_the_criterion_asked_for_decides_who_leaves(built_dir: Path, reference: Reference, real_images: np.ndarray, batch: int) -> None:
    """Thresholds on max probability leave other rows than the same thresholds on entropy."""
    maxprob = [run_named(s, x)["maxprob"] for s, x in zip(reference.sessions, [real_images, *reference.run(real_images)[2]])]
    thresholds = [float(np.median(maxprob[0])), float(np.median(maxprob[1]))]
    expected = np.full(len(real_images), FINAL)
    for k in (1, 0):
        expected[maxprob[k] <= thresholds[k]] = k
    runtime = Runtime(built_dir)
    got = np.concatenate([runtime.infer(real_images[i : i + batch], thresholds, "maxprob").exits for i in range(0, len(real_images), batch)])
    np.testing.assert_array_equal(got, expected)
    assert not np.array_equal(got, reference.expect(real_images, thresholds)[0])  # entropy would decide otherwise


@pytest.mark.parametrize("batch", [1, 3])
def test_a_row_whose_scores_are_nan_leaves_at_the_final_exit(runtime: Runtime, real_images: np.ndarray, batch: int) -> None:
    images = real_images[:batch].copy()
    images[-1] = np.nan  # NaN <= threshold is false at every early exit
    result = runtime.infer(images, thresholds=[1e9, 1e9])
    assert result.exits.tolist() == [0] * (batch - 1) + [FINAL]


@pytest.mark.parametrize("batch", [1, 2, MAX_BATCH])
def test_latencies_are_milliseconds_of_the_call_itself(built_dir: Path, real_images: np.ndarray, batch: int) -> None:
    runtime = Runtime(built_dir, operating_point="full")
    for thresholds, whole in ((None, True), ([None, None], True), ([None, None], False), ([0.5, 0.5], True)):
        start = time.perf_counter()
        result = runtime.infer(real_images[:batch], thresholds, whole=whole)
        wall_ms = (time.perf_counter() - start) * 1e3
        assert 0.5 * result.total_ms <= sum(result.segment_ms) <= result.total_ms <= wall_ms
        assert result.exits.shape == (batch,)
        one_engine = whole and thresholds in (None, [None, None])  # the whole engine: one call, no segment of its own
        assert (result.segment_ms[:FINAL] == [0.0, 0.0]) == one_engine
