"""edge.backends: the factory, onnxruntime session options, run and take on real engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edge.backends import BACKENDS, create_backend
from edge.backends.onnx_prune import prune_to_outputs
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend, online_cores
from edge.errors import BackendError, ManifestError
from tests.helpers import INPUT_SHAPE, reference_session, run_named

SPINNING = "session.intra_op.allow_spinning"


def test_unknown_backend_name() -> None:
    with pytest.raises(ValueError, match="unknown backend 'nope'.*onnxruntime"):
        create_backend("nope")
    assert "onnxruntime" in BACKENDS


def test_factory_passes_options() -> None:
    backend = create_backend("onnxruntime", threads=3, shared_threads=False, spinning=True, optimization="basic")
    assert (backend.threads, backend.shared_threads, backend.spinning, backend.optimization) == (3, False, True, "basic")
    assert create_backend().name == "onnxruntime"


def fresh_process(code: str) -> str:
    """Run `code` in a new interpreter (no onnxruntime global pool yet); return its stdout."""
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


def test_per_session_threads_without_spinning() -> None:
    """shared_threads=False in a process with no shared pool: own pool, sized, not spinning.

    Checked in a fresh interpreter: once any shared backend made the process-wide pool,
    onnxruntime refuses per-session pools and every backend joins it (tested below).
    """
    code = (
        "import json\n"
        "from edge.backends.onnxruntime_backend import OnnxRuntimeBackend\n"
        "out = {}\n"
        "for threads, spinning in ((1, False), (3, False), (2, True)):\n"
        "    o = OnnxRuntimeBackend(threads=threads, shared_threads=False, spinning=spinning).session_options()\n"
        "    out[f'{threads}-{spinning}'] = [o.use_per_session_threads, o.intra_op_num_threads,\n"
        f"        o.inter_op_num_threads, o.get_session_config_entry({SPINNING!r})]\n"
        "print(json.dumps(out))\n"
    )
    got = json.loads(fresh_process(code))
    assert got == {
        "1-False": [True, 1, 1, "0"],
        "3-False": [True, 3, 1, "0"],
        "2-True": [True, 2, 1, "1"],
    }


def test_every_backend_joins_the_shared_pool_once_it_exists(built, real_images) -> None:
    manifest, _ = built
    shared = OnnxRuntimeBackend()
    assert shared.session_options().use_per_session_threads is False  # makes the pool if need be
    private = OnnxRuntimeBackend(threads=1, shared_threads=False)
    assert private.session_options().use_per_session_threads is False
    shared.load(manifest)
    private.load(manifest)  # loads instead of being refused by onnxruntime
    x = np.ascontiguousarray(real_images[:4])
    for k in range(3):
        a, b = private.run(k, x), shared.run(k, x)
        np.testing.assert_allclose(a.probs, b.probs, rtol=0, atol=1e-6)
        x = a.features


@pytest.mark.parametrize(
    "level, expected",
    [("none", "ORT_DISABLE_ALL"), ("basic", "ORT_ENABLE_BASIC"), ("extended", "ORT_ENABLE_EXTENDED"), ("all", "ORT_ENABLE_ALL")],
)
def test_optimization_levels(level: str, expected: str) -> None:
    options = OnnxRuntimeBackend(shared_threads=False, optimization=level).session_options()
    assert options.graph_optimization_level == getattr(ort.GraphOptimizationLevel, expected)


def test_shared_threads_use_the_process_pool() -> None:
    options = OnnxRuntimeBackend(threads=2).session_options()
    assert options.use_per_session_threads is False


def test_default_thread_count_is_the_online_cores() -> None:
    cores = online_cores()
    assert 1 <= cores <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity"):
        assert cores == len(os.sched_getaffinity(0))
    assert OnnxRuntimeBackend().threads == cores
    assert OnnxRuntimeBackend(threads=5).threads == 5


def test_take_keeps_the_right_rows() -> None:
    backend = OnnxRuntimeBackend()
    features = np.arange(6 * 2 * 3 * 3, dtype=np.float32).reshape(6, 2, 3, 3)
    rows = np.array([4, 1, 5])
    taken = backend.take(features, rows)
    assert taken.shape == (3, 2, 3, 3) and taken.flags.c_contiguous and taken.dtype == np.float32
    for out_row, in_row in enumerate(rows):
        np.testing.assert_array_equal(taken[out_row], features[in_row])
    taken[0] = -1.0  # a copy: the batch it came from is untouched
    assert features.min() == 0.0
    mask = np.array([False, True, False, False, True, True])
    np.testing.assert_array_equal(backend.take(features, np.flatnonzero(mask)), features[mask])
    assert backend.take(features, np.array([], dtype=np.int64)).shape == (0, 2, 3, 3)


@pytest.fixture(scope="module")
def loaded(built):
    manifest, _ = built
    backend = OnnxRuntimeBackend()
    backend.load(manifest)
    yield backend
    backend.close()


def test_run_returns_features_probs_and_scores(loaded, built, real_images) -> None:
    manifest, folder = built
    x = np.ascontiguousarray(real_images[:6])
    features = loaded.upload(x)
    for k, info in enumerate(manifest.segments):
        out = loaded.run(k, features)
        assert out.probs.shape == (6, 10) and out.scores.shape == (6,)
        expected = run_named(reference_session(folder / info.file), features)
        np.testing.assert_allclose(out.probs, expected[info.probs_output], rtol=0, atol=1e-6)
        np.testing.assert_allclose(out.scores, expected[info.score_output], rtol=0, atol=1e-6)
        if info.features_output is None:
            assert out.features is None
        else:
            assert out.features.shape == tuple([6, *info.outputs[0].shape[1:]])
            np.testing.assert_allclose(out.features, expected[info.features_output], rtol=0, atol=1e-6)
        features = out.features


def test_take_then_run_equals_run_then_select(loaded, real_images) -> None:
    x = np.ascontiguousarray(real_images[:10])
    first = loaded.run(0, loaded.upload(x))
    rows = np.array([9, 2, 3, 7])
    on_subset = loaded.run(1, loaded.take(first.features, rows))
    on_all = loaded.run(1, first.features)
    np.testing.assert_allclose(on_subset.probs, on_all.probs[rows], rtol=0, atol=1e-5)
    np.testing.assert_allclose(on_subset.scores, on_all.scores[rows], rtol=0, atol=1e-5)
    np.testing.assert_allclose(on_subset.features, on_all.features[rows], rtol=0, atol=1e-5)


def test_load_names_a_file_onnxruntime_rejects(built_copy: Path) -> None:
    from edge.manifest import load_manifest

    manifest = load_manifest(built_copy)
    (built_copy / "segment_2.onnx").write_bytes(b"\x08\x01garbage")
    backend = OnnxRuntimeBackend()
    with pytest.raises(ManifestError, match="cannot load this engine") as info:
        backend.load(manifest)
    assert str(built_copy / "segment_2.onnx") in str(info.value)


def test_per_session_backend_in_a_fresh_process(built_dir: Path) -> None:
    """shared_threads=False works when nothing set up the global pool first."""
    code = (
        "import numpy as np\n"
        "from edge.runtime import Runtime\n"
        f"rt = Runtime({str(built_dir)!r}, threads=1, shared_threads=False)\n"
        f"x = np.random.default_rng(0).random((5, {', '.join(map(str, INPUT_SHAPE))}), dtype=np.float32)\n"
        "r = rt.infer(x, thresholds=[None, None])\n"
        "print(r.exits.tolist())\n"
    )
    assert fresh_process(code) == "[2, 2, 2, 2, 2]"


def test_a_failing_segment_raises_backend_error_naming_it(loaded) -> None:
    from edge.errors import BackendError

    wrong = np.zeros((1, 3, 5, 5), dtype=np.float32)  # not what segment 1 takes
    with pytest.raises(BackendError, match="segment 1"):
        loaded.run(1, wrong)


def test_advance_hands_on_the_same_features_as_run(loaded, built, real_images) -> None:
    manifest, _ = built
    features = loaded.upload(np.ascontiguousarray(real_images[:5]))
    for k in range(len(manifest.segments) - 1):
        out = loaded.run(k, features)
        trunk = loaded.advance(k, features)
        np.testing.assert_array_equal(trunk, out.features)
        features = out.features
    with pytest.raises(BackendError, match="segment 1 \\(exit off\\)"):
        loaded.advance(1, np.zeros((1, 3, 5, 5), dtype=np.float32))


def test_without_trunks_advance_runs_the_whole_segment(built, real_images) -> None:
    manifest, _ = built
    backend = OnnxRuntimeBackend(trunks=False)
    backend.load(manifest)
    x = np.ascontiguousarray(real_images[:3])
    np.testing.assert_array_equal(backend.advance(0, x), backend.run(0, x).features)


def test_pruned_segment_keeps_the_body_and_drops_the_exit_head(built) -> None:
    manifest, folder = built
    info = manifest.segments[0]
    model = onnx.load(str(folder / info.file))
    nodes_before = len(model.graph.node)
    trunk = prune_to_outputs(model, [info.features_output])
    ops, trunk_ops = Counter(n.op_type for n in model.graph.node), Counter(n.op_type for n in trunk.graph.node)
    assert [o.name for o in trunk.graph.output] == [info.features_output]
    assert trunk_ops["Conv"] == ops["Conv"] > 0
    assert ops["Gemm"] >= 1 and trunk_ops["Gemm"] == 0
    assert len(trunk.graph.initializer) < len(model.graph.initializer)
    onnx.checker.check_model(trunk)
    assert len(model.graph.node) == nodes_before  # the source model is left as it was
    with pytest.raises(ValueError, match="no output"):
        prune_to_outputs(model, ["logits"])
