"""The backend contract, parametrized over backends: onnxruntime here, TensorRT wherever
`tensorrt`, pycuda and a GPU exist (skipped with the reason otherwise)."""

from __future__ import annotations

import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from edge.backends import Backend, create_backend
from edge.errors import BackendError
from edge.manifest import load_manifest
from edge.runtime import Runtime

BACKENDS = ["onnxruntime", "tensorrt"]


def tensorrt_missing() -> str | None:
    try:
        import pycuda.driver  # noqa: F401
        import tensorrt  # noqa: F401
    except ImportError as exc:
        return f"needs TensorRT and pycuda on an NVIDIA GPU ({exc.name} is not installed)"
    try:
        from edge.backends.tensorrt_device import device_identity

        device_identity()
    except Exception as exc:  # no driver, no device
        return f"needs an NVIDIA GPU ({type(exc).__name__}: {exc})"
    return None


@pytest.fixture(params=BACKENDS)
def backend_and_manifest(request: pytest.FixtureRequest, built_dir: Path, tmp_path: Path) -> Iterator[tuple[Backend, Any]]:
    folder = Path(shutil.copytree(built_dir, tmp_path / "engines"))
    manifest = load_manifest(folder)
    if request.param == "tensorrt":
        reason = tensorrt_missing()
        if reason:
            pytest.skip(reason)
        from engines.tensorrt_build import build_tensorrt_engines

        manifest = build_tensorrt_engines(manifest)
    backend = create_backend(request.param)
    backend.load(manifest)
    yield backend, manifest
    backend.close()


def host(backend: Backend, features: Any) -> np.ndarray:
    """Features back on the host, whatever the backend keeps them as."""
    if isinstance(features, np.ndarray):
        return features
    import pycuda.driver as cuda

    out = np.empty(features.shape, np.float32)
    cuda.memcpy_dtoh(out, features.pointer)
    return out


def test_the_chain_of_runs_is_the_network(backend_and_manifest, net, real_images: np.ndarray) -> None:
    backend, manifest = backend_and_manifest
    with torch.no_grad():
        expected = [torch.softmax(z, 1).numpy() for z in net(torch.from_numpy(real_images))]
    features = backend.upload(real_images)
    for k in range(manifest.num_exits):
        out = backend.run(k, features)
        np.testing.assert_allclose(out.probs, expected[k], atol=1e-3)
        assert out.scores.shape == (len(real_images),) and (out.scores >= 0).all()
        assert (out.features is None) == (k == manifest.num_exits - 1)
        features = out.features


def test_advance_hands_on_the_same_features_as_run(backend_and_manifest, real_images: np.ndarray) -> None:
    backend, _ = backend_and_manifest
    ran = host(backend, backend.run(0, backend.upload(real_images)).features)
    advanced = host(backend, backend.advance(0, backend.upload(real_images)))
    np.testing.assert_allclose(advanced, ran, atol=1e-5)


def test_take_keeps_the_asked_rows_in_order(backend_and_manifest, real_images: np.ndarray) -> None:
    backend, _ = backend_and_manifest
    features = backend.run(0, backend.upload(real_images[:10])).features
    full = host(backend, features).copy()
    rows = np.array([1, 2, 3, 7, 9])
    kept = backend.take(features, rows)
    np.testing.assert_array_equal(host(backend, kept), full[rows])
    np.testing.assert_allclose(backend.run(1, kept).probs, backend.run(1, backend.upload(np.ascontiguousarray(full[rows]))).probs, atol=1e-5)


def test_every_criterion_the_manifest_names_is_served_and_others_are_refused(backend_and_manifest, real_images: np.ndarray) -> None:
    backend, manifest = backend_and_manifest
    for criterion in manifest.segments[0].criteria:
        assert backend.run(0, backend.upload(real_images[:2]), criterion).scores.shape == (2,)
    with pytest.raises(BackendError, match="no 'psychic' score"):
        backend.run(0, backend.upload(real_images[:2]), "psychic")


def test_chains_on_several_threads_with_different_inputs_do_not_mix(backend_and_manifest, real_images: np.ndarray) -> None:
    backend, manifest = backend_and_manifest
    slices = [real_images[4 * t:4 * t + 4] for t in range(4)]

    def chain(images: np.ndarray) -> np.ndarray:
        features, out = backend.upload(images), None
        for k in range(manifest.num_exits):
            out = backend.run(k, features)
            features = out.features
        return out.probs  # type: ignore[union-attr]

    references = [chain(x) for x in slices]
    errors: list[int] = []

    def work(t: int) -> None:
        for _ in range(15):
            if not np.allclose(chain(slices[t]), references[t], atol=1e-5):
                errors.append(t)

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []


def test_a_closed_backend_says_so(backend_and_manifest, real_images: np.ndarray) -> None:
    backend, _ = backend_and_manifest
    backend.close()
    with pytest.raises(BackendError, match="no engine loaded"):
        backend.run(0, backend.upload(real_images[:1]))


def test_the_same_manifest_runs_unchanged_through_the_runtime_on_tensorrt(built_dir: Path, tmp_path: Path, real_images: np.ndarray) -> None:
    """TensorRT plans of the manifest's engines answer as onnxruntime does (onnxruntime
    against itself would prove nothing, so this one is TensorRT's alone)."""
    reason = tensorrt_missing()
    if reason:
        pytest.skip(reason)
    from engines.tensorrt_build import build_tensorrt_engines

    folder = Path(shutil.copytree(built_dir, tmp_path / "engines"))
    build_tensorrt_engines(load_manifest(folder))
    reference = Runtime(built_dir).infer(real_images, thresholds=[0.3, 0.3])
    runtime = Runtime(folder, "tensorrt")
    result = runtime.infer(real_images, thresholds=[0.3, 0.3])
    np.testing.assert_array_equal(result.exits, reference.exits)
    np.testing.assert_allclose(result.probabilities, reference.probabilities, atol=1e-3)
    runtime.close()
