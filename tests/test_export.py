"""engines.export / engines.build: every ONNX segment reproduces torch, alone and chained."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from engines.export import ENTROPY, FEATURES, MAXPROB, PROBS, ExportableSegment
from tests.helpers import INPUT_SHAPE, MAX_BATCH, TEMPERATURE, reference_session, run_named

TOL = 1e-4


def torch_inputs_per_segment(net, x: np.ndarray) -> list[np.ndarray]:
    """What each segment is fed when the torch segments before it ran on `x`."""
    feeds = [x]
    t = torch.from_numpy(x)
    with torch.no_grad():
        for segment in net.segments[:-1]:
            t = segment(t)[0]
            feeds.append(np.ascontiguousarray(t.numpy()))
    return feeds


def np_entropy(probs: np.ndarray) -> np.ndarray:
    p = probs.astype(np.float64)
    logs = np.log(np.where(p > 0, p, 1.0))
    return -(p * logs).sum(axis=1)


def torch_softmax(net, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return torch.softmax(net.backbone(torch.from_numpy(x)).double(), dim=1).numpy()


@pytest.fixture(scope="module")
def sessions(built):
    manifest, folder = built
    return [reference_session(folder / s.file) for s in manifest.segments]


@pytest.fixture(scope="module", params=["real", "random"])
def inputs(request, real_images, random_images) -> np.ndarray:
    return real_images if request.param == "real" else random_images


@pytest.mark.parametrize("batch", [1, 5])
def test_each_segment_matches_torch(net, sessions, inputs, batch: int) -> None:
    x = np.ascontiguousarray(inputs[3 : 3 + batch])
    for k, (segment, session, feed) in enumerate(zip(net.segments, sessions, torch_inputs_per_segment(net, x))):
        got = run_named(session, feed)
        wrapped = ExportableSegment(segment)
        with torch.no_grad():
            expected = wrapped(torch.from_numpy(feed))
        names = [PROBS, ENTROPY, MAXPROB] if segment.is_final else [FEATURES, PROBS, ENTROPY, MAXPROB]
        assert wrapped.output_names() == names
        assert sorted(got) == sorted(names), f"segment {k} outputs"
        for name, tensor in zip(names, expected):
            assert got[name].shape == tuple(tensor.shape) and got[name].shape[0] == batch
            diff = float(np.max(np.abs(got[name] - tensor.numpy())))
            assert diff <= TOL, f"segment {k} {name}: |onnx - torch| = {diff}"


def test_batch_dimension_is_dynamic(built, sessions) -> None:
    manifest, _ = built
    for session, info in zip(sessions, manifest.segments):
        (model_input,) = session.get_inputs()
        assert model_input.name == info.input.name
        assert isinstance(model_input.shape[0], str), f"{info.file}: batch dim is fixed {model_input.shape}"
        assert list(model_input.shape[1:]) == info.input.shape[1:]
    # One engine, batches 1, 7 and the maximum: rows are independent of the batch they run in.
    x = np.random.default_rng(9).random((MAX_BATCH, *INPUT_SHAPE), dtype=np.float32)
    whole = run_named(sessions[0], x)
    for rows in (slice(10, 11), slice(20, 27)):
        part = run_named(sessions[0], np.ascontiguousarray(x[rows]))
        np.testing.assert_allclose(part[PROBS], whole[PROBS][rows], rtol=0, atol=1e-5)


def test_manifest_describes_the_engine_tensors(built, sessions) -> None:
    manifest, _ = built
    x = np.ascontiguousarray(np.random.default_rng(4).random((3, *INPUT_SHAPE), dtype=np.float32))
    for session, info in zip(sessions, manifest.segments):
        outputs = run_named(session, x)
        described = {o.name: o.shape for o in info.outputs}
        assert set(described) == set(outputs)
        for name, value in outputs.items():
            assert described[name][0] == "batch"
            assert list(value.shape[1:]) == described[name][1:], f"{info.file}:{name}"
        assert info.probs_output in outputs and info.score_output in outputs
        if info.features_output is not None:
            x = outputs[info.features_output]


def test_onnx_chain_reproduces_backbone_softmax(net, sessions, inputs) -> None:
    x = np.ascontiguousarray(inputs[:20])
    features = x
    for session in sessions:
        outputs = run_named(session, features)
        features = outputs.get(FEATURES)
    assert features is None  # the last engine hands nothing on
    expected = torch_softmax(net, x)
    assert np.max(np.abs(outputs[PROBS] - expected)) <= TOL
    np.testing.assert_array_equal(outputs[PROBS].argmax(1), expected.argmax(1))
    assert np.max(np.abs(outputs[ENTROPY] - np_entropy(expected))) <= TOL


def test_static_model_reproduces_backbone_softmax(built, net, inputs, sessions) -> None:
    manifest, folder = built
    assert manifest.static_model is not None
    static = reference_session(folder / manifest.static_model["file"])
    for batch in (1, 5):
        x = np.ascontiguousarray(inputs[7 : 7 + batch])
        out = run_named(static, x)
        assert out[PROBS].shape == (batch, 10)
        assert np.max(np.abs(out[PROBS] - torch_softmax(net, x))) <= TOL
        assert np.max(np.abs(out[ENTROPY] - np_entropy(out[PROBS]))) <= 1e-5


def test_entropy_output_is_entropy_of_probs(sessions, inputs) -> None:
    features = np.ascontiguousarray(inputs[:16])
    for k, session in enumerate(sessions):
        out = run_named(session, features)
        probs = out[PROBS]
        np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=0, atol=1e-5)
        assert probs.min() >= 0.0
        assert out[ENTROPY].shape == (16,)
        np.testing.assert_allclose(out[ENTROPY], np_entropy(probs), rtol=0, atol=1e-5, err_msg=f"exit {k}")
        assert np.all(out[ENTROPY] <= np.log(10) + 1e-5)
        features = out.get(FEATURES)


def test_exit_probs_match_torch_exit_heads(net, sessions, real_images) -> None:
    """Each early exit's probabilities are softmax(exit head logits) of the torch network."""
    x = np.ascontiguousarray(real_images[:12])
    with torch.no_grad():
        logits = net(torch.from_numpy(x))
    features = x
    for k, session in enumerate(sessions):
        out = run_named(session, features)
        expected = torch.softmax(logits[k].double(), dim=1).numpy()
        assert np.max(np.abs(out[PROBS] - expected)) <= TOL, f"exit {k}"
        features = out.get(FEATURES)


def test_exits_are_not_trivial(sessions, real_images, digits_test) -> None:
    """Guard for the other tests: the fitted exits disagree and have spread-out entropies."""
    features = real_images
    entropies, predictions = [], []
    for session in sessions:
        out = run_named(session, features)
        entropies.append(out[ENTROPY])
        predictions.append(out[PROBS].argmax(1))
        features = out.get(FEATURES)
    for e, p in zip(entropies, predictions):
        assert np.ptp(e) > 0.5 and len(np.unique(p)) >= 5
        assert (p == digits_test.labels[:MAX_BATCH]).mean() > 0.5


def test_temperature_and_variant_head_export(temperature_export, real_images) -> None:
    segment, graph = temperature_export
    session = reference_session(graph.path)
    for batch in (1, 5):
        x = np.ascontiguousarray(real_images[:batch])
        out = run_named(session, x)
        with torch.no_grad():
            features, logits = segment(torch.from_numpy(x))
        assert np.max(np.abs(out[FEATURES] - features.numpy())) <= TOL
        scaled = torch.softmax(logits.double() / TEMPERATURE, dim=1).numpy()
        plain = torch.softmax(logits.double(), dim=1).numpy()
        assert np.max(np.abs(out[PROBS] - scaled)) <= TOL
        assert np.max(np.abs(scaled - plain)) > 10 * TOL  # the temperature does matter here
        np.testing.assert_allclose(out[ENTROPY], np_entropy(out[PROBS]), rtol=0, atol=1e-5)


def test_build_checks_catch_a_mismatching_engine(export_check_results) -> None:
    assert all(0.0 <= d <= TOL for d in export_check_results["diffs"])
    error = export_check_results["mismatch"]
    assert error is not None, "a perturbed exit head was not detected"
    assert "segment_1.onnx" in str(error) and "exceeds" in str(error)


def test_build_returns_what_it_wrote(built) -> None:
    from edge.manifest import load_manifest

    manifest, folder = built
    assert load_manifest(folder) == manifest
    assert [s.file for s in manifest.segments] == ["segment_0.onnx", "segment_1.onnx", "segment_2.onnx"]
    assert [e.after for e in manifest.exits] == ["layer1.0", "layer2.0", "final"]
    assert manifest.input.shape == ["batch", *INPUT_SHAPE]
    assert manifest.batch["max"] == MAX_BATCH
    assert manifest.normalization["applied"] == "in_graph"
    assert manifest.default_operating_point == "full"
    assert not list(folder.glob(".*.tmp")), "atomic writes left temp files behind"


def test_export_check_still_works_after_a_runtime_exists(built, net, real_images) -> None:
    from edge.runtime import Runtime
    from engines.export import ExportedGraph, TensorSpec, max_abs_diff_vs_torch

    manifest, folder = built
    Runtime(folder)  # e.g. a tool that builds, tries the engines, then rebuilds
    info = manifest.segments[0]
    graph = ExportedGraph(folder / info.file, [TensorSpec(info.input.name, info.input.shape)], [])
    x = np.ascontiguousarray(real_images[:4])
    assert max_abs_diff_vs_torch(ExportableSegment(net.segments[0]), graph, [x]) <= TOL


def test_the_exporters_torchvision_skips_are_silenced_and_its_other_warnings_kept(caplog: pytest.LogCaptureFixture) -> None:
    from engines.export import EXPORTER_REGISTRY_LOGGER

    registry = logging.getLogger(EXPORTER_REGISTRY_LOGGER)
    with caplog.at_level(logging.WARNING, logger=EXPORTER_REGISTRY_LOGGER):
        registry.warning("torchvision is not installed. Skipping %s", "torchvision::nms")
        registry.warning("something else went wrong")
    assert [r.getMessage() for r in caplog.records] == ["something else went wrong"]
