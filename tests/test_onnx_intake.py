"""An ONNX file alone becomes an early-exit chain (engines.onnx_intake, calibration.onnx_exits).

A torchvision ResNet-18 is exported to ONNX and the PyTorch model deleted: the file
stands in for one from elsewhere. An NHWC version of it (a transpose in front, as Keras
exports them) and a small CNN written with onnx.helper at a fixed batch of 1, whose
reshape spells that batch out, go through as well.
"""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

from calibration.onnx_exits import OnnxExitsJob, measured_cuts, onnx_exits
from calibration.train import TrainConfig
from edge.daemon.config import DaemonConfig
from edge.daemon.main import Daemon
from edge.manifest import load_manifest
from edge.runtime import Runtime
from engines.onnx_intake.cuts import clean_cuts, resolve_cuts
from engines.onnx_intake.model import InputOptions, OnnxIntakeError, load_classifier
from engines.onnx_intake.segments import check_chain, extract_segments
from tests.helpers import reference_session
from tools import onnx_exits as onnx_tool
from tools._cli import run_main

SIZE = 32  # digits, resized: ResNet-18's stem halves the input twice


def _softmax(z: np.ndarray, t: float = 1.0) -> np.ndarray:
    e = np.exp(z / t - (z / t).max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def resnet_onnx(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """torchvision's ResNet-18 (random weights, 10 classes) as an ONNX file, and nothing else."""
    from torchvision.models import resnet18

    torch.manual_seed(0)
    model = resnet18(num_classes=10).eval()
    path = tmp_path_factory.mktemp("onnx") / "resnet18.onnx"
    batch = torch.export.Dim("batch", min=1, max=256)
    torch.onnx.export(model, (torch.rand(2, 3, SIZE, SIZE),), str(path), input_names=["x"], output_names=["logits"],
                      dynamic_shapes=({0: batch},), opset_version=18, dynamo=True, external_data=False, verbose=False)
    del model
    gc.collect()
    return path


@pytest.fixture(scope="module")
def nhwc_onnx(resnet_onnx: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same network taking (batch, H, W, C): a transpose in front of it."""
    model = onnx.load(str(resnet_onnx))
    graph = model.graph
    original = graph.input[0]
    graph.node.insert(0, helper.make_node("Transpose", ["x_nhwc"], [original.name], perm=[0, 3, 1, 2], name="from_nhwc"))
    graph.input.remove(original)
    graph.input.insert(0, helper.make_tensor_value_info("x_nhwc", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3]))
    path = tmp_path_factory.mktemp("nhwc") / "resnet18_nhwc.onnx"
    onnx.save(model, str(path))
    return path


def fixed_batch_cnn(path: Path, opset: int = 13, shape_in_a_constant_node: bool = False) -> Path:
    """A small CNN on 1x8x8 images at a fixed batch of 1; its reshape is to (1, -1), the
    target a weight (as the dynamo exporter writes it) or a Constant node (TorchScript's)."""
    rng = np.random.default_rng(0)

    def weight(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)

    nodes = [
        helper.make_node("Conv", ["image", "w1"], ["c1"], pads=[1, 1, 1, 1], name="conv1"),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1], strides=[2, 2], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3"], ["c3"], pads=[1, 1, 1, 1], name="conv3"),
        helper.make_node("Add", ["c3", "r2"], ["sum3"], name="residual"),
        helper.make_node("Relu", ["sum3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["pooled"], name="pool"),
        helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["scores"], transB=1, name="fc"),
    ]
    weights = [weight("w1", 8, 1, 3, 3), weight("w2", 16, 8, 3, 3), weight("w3", 16, 16, 3, 3), weight("fc_w", 10, 16),
               numpy_helper.from_array(np.zeros(10, np.float32), "fc_b")]
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "flat_shape")
    if shape_in_a_constant_node:
        nodes.insert(8, helper.make_node("Constant", [], ["flat_shape"], value=shape, name="shape"))
    else:
        weights.append(shape)
    graph = helper.make_graph(nodes, "fixed", [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 8, 8])],
                              [helper.make_tensor_value_info("scores", TensorProto.FLOAT, [1, 10])], weights)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]), str(path))
    return path


def test_the_clean_cuts_of_a_resnet_are_its_block_outputs_and_the_chain_is_the_model(resnet_onnx: Path, digits_test) -> None:
    classifier = load_classifier(resnet_onnx)
    points = clean_cuts(classifier)
    shapes = [tuple(p.shape) for p in points]
    # the stem (its ReLU, its pool), then each basic block's output (not its residual add, one
    # node before at the same shape), then the pooled features; nothing inside a block
    assert shapes[-8:] == [(64, 8, 8)] * 2 + [(128, 4, 4)] * 2 + [(256, 2, 2)] * 2 + [(512, 1, 1)] * 2
    assert len(points) == 10 and points[0].shape == [64, SIZE // 2, SIZE // 2]
    cuts = resolve_cuts(points, [points[-7].name, points[-5].name], classifier)
    segments = extract_segments(classifier, cuts)
    images = np.repeat(np.stack([np.kron(i, np.ones((4, 4), np.float32)) for i in digits_test.images[:4, 0]])[:, None], 3, axis=1)
    assert check_chain(classifier, segments, images) <= 1e-5
    assert [s.graph.input[0].type.tensor_type.shape.dim[0].dim_param for s in segments] == ["batch"] * 3


def test_a_cut_inside_a_residual_block_is_refused_with_the_tensors_that_cross(tmp_path: Path) -> None:
    classifier = load_classifier(fixed_batch_cnn(tmp_path / "cnn.onnx"))
    with pytest.raises(OnnxIntakeError, match=r"'c3' is not a clean cut: 2 tensors cross there \(c3, r2\)"):
        resolve_cuts(clean_cuts(classifier), ["c3"], classifier)
    with pytest.raises(OnnxIntakeError, match="no tensor or node 'nowhere'"):
        resolve_cuts(clean_cuts(classifier), ["nowhere"], classifier)
    assert [p.name for p in resolve_cuts(clean_cuts(classifier), ["relu3", "relu1"], classifier)] == ["r1", "r3"]  # node names, in graph order


@pytest.mark.parametrize("in_a_constant_node", [False, True])
def test_a_fixed_batch_with_a_reshape_that_spells_it_becomes_dynamic(tmp_path: Path, in_a_constant_node: bool) -> None:
    path = fixed_batch_cnn(tmp_path / "cnn.onnx", shape_in_a_constant_node=in_a_constant_node)
    classifier = load_classifier(path)
    assert classifier.fixed_batch == 1 and classifier.input_shape == (1, 8, 8) and classifier.num_classes == 10
    x = np.random.default_rng(2).random((5, 1, 8, 8), dtype=np.float32)
    original = reference_session(path)
    expected = np.concatenate([original.run(None, {"image": x[i : i + 1]})[0] for i in range(5)])
    np.testing.assert_allclose(classifier.session().run(None, {"image": x})[0], expected, atol=1e-5)


def test_an_nhwc_model_takes_nchw_images_and_answers_as_the_file_does(nhwc_onnx: Path) -> None:
    classifier = load_classifier(nhwc_onnx)
    assert classifier.layout == "nhwc" and classifier.input_shape == (3, SIZE, SIZE)
    x = np.random.default_rng(3).random((2, 3, SIZE, SIZE), dtype=np.float32)
    expected = reference_session(nhwc_onnx).run(None, {"x_nhwc": np.ascontiguousarray(x.transpose(0, 2, 3, 1))})[0]
    np.testing.assert_allclose(classifier.session().run(None, {classifier.input_name: x})[0], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(OnnxIntakeError, match="cannot tell NCHW from NHWC"):
        _ambiguous(nhwc_onnx)


def _ambiguous(path: Path) -> None:
    model = onnx.load(str(path))
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 3  # (batch, 3, 32, 3): either way
    out = path.with_name("ambiguous.onnx")
    onnx.save(model, str(out))
    load_classifier(out)


def test_normalization_given_as_options_is_applied_in_the_graph(tmp_path: Path) -> None:
    path = fixed_batch_cnn(tmp_path / "cnn.onnx")
    classifier = load_classifier(path, InputOptions(mean=(0.5,), std=(0.25,)))
    assert classifier.normalization == {"mean": [0.5], "std": [0.25], "applied": "in_graph"}
    x = np.random.default_rng(4).random((1, 1, 8, 8), dtype=np.float32)
    expected = reference_session(path).run(None, {"image": (x - 0.5) / 0.25})[0]
    np.testing.assert_allclose(classifier.session().run(None, {classifier.input_name: x})[0], expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(("change", "message"), [
    ("garbage", "not a readable ONNX model"),
    ("unknown_op", "onnxruntime .* cannot load this model"),
    ("feature_map_output", r"output 'r3' has shape \[1, 16, 4, 4\] at batch 1; a classifier outputs \(batch, classes\)"),
    ("two_inputs", "the model takes 2 inputs"),
    ("old_opset", "opset 9; the intake needs opset 11 or newer"),
    ("batch_in_a_reshape", "does not run with its fixed batch 1 made dynamic"),
])
def test_a_model_that_cannot_be_taken_in_gets_a_one_line_reason(tmp_path: Path, change: str, message: str) -> None:
    path = fixed_batch_cnn(tmp_path / "cnn.onnx", opset=9 if change == "old_opset" else 13)
    model = onnx.load(str(path))
    if change == "garbage":
        path.write_bytes(b"\x08\x07 this is not protobuf" * 10)
    elif change == "unknown_op":
        model.graph.node[1].op_type = "NoSuchOp"
        onnx.save(model, str(path))
    elif change == "feature_map_output":
        del model.graph.output[:]
        model.graph.output.append(helper.make_tensor_value_info("r3", TensorProto.FLOAT, None))
        onnx.save(model, str(path))
    elif change == "batch_in_a_reshape":  # (1, 16, 1, 1) -> (16, 1) -> transposed: batch 2 cannot be reshaped so
        model.graph.initializer.append(numpy_helper.from_array(np.array([16, 1], np.int64), "column"))
        model.graph.node[8].input[1] = "column"
        model.graph.node[8].output[0] = "as_column"
        model.graph.node.insert(9, helper.make_node("Transpose", ["as_column"], ["flat"], perm=[1, 0], name="to_row"))
        onnx.save(model, str(path))
    elif change == "two_inputs":
        model.graph.input.append(helper.make_tensor_value_info("mask", TensorProto.FLOAT, [1, 1, 8, 8]))
        model.graph.node[0].input[0] = "mask"
        model.graph.node.insert(0, helper.make_node("Add", ["image", "mask"], ["unused"], name="unused"))
        onnx.save(model, str(path))
    with pytest.raises(OnnxIntakeError, match=message) as caught:
        load_classifier(path)
    assert "\n" not in str(caught.value)


def test_an_onnx_file_alone_goes_through_exits_calibration_runtime_and_edged(resnet_onnx: Path, tmp_path: Path) -> None:
    job = OnnxExitsJob(resnet_onnx, data="digits", out=tmp_path / "run", train=TrainConfig(epochs=4, lr=0.5, batch_size=32, progress=False),
                       int8=False, profile_calls=30, rounds=10, test_samples=150)
    report = onnx_exits(job)
    manifest = load_manifest(tmp_path / "run" / "engines")
    assert len(manifest.segments) == 3 and [e.after for e in manifest.exits][-1] == "final"
    assert {p.criterion for p in manifest.operating_points} >= {"entropy", "maxprob"}
    assert report["chosen_cuts"] == [e.after for e in manifest.exits[:-1]]
    # the chain at full depth is the original file (at the final exit's temperature)
    images = np.random.default_rng(5).random((6, 3, SIZE, SIZE), dtype=np.float32)
    assert_full_depth_is_the_file(manifest, resnet_onnx, images)
    # the heads learned digits from the frozen random backbone's features
    assert max(report["calibration_exit_accuracy"]["fp32"][:-1]) > 0.5
    daemon = Daemon(DaemonConfig(grpc_port=0, model_repository=str(tmp_path / "run"), port=0, sensors="none"))
    daemon.start()
    try:
        import tritonclient.http as tritonclient

        url = "{}:{}".format(*daemon.address)
        tensor = tritonclient.InferInput(manifest.input.name, list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        answer = tritonclient.InferenceServerClient(url).infer("engines", [tensor], outputs=[tritonclient.InferRequestedOutput("prediction")])
        assert answer.as_numpy("prediction").tolist() == Runtime(manifest).infer(images).predictions.tolist()
    finally:
        daemon.stop()


def test_an_nhwc_model_goes_through_and_its_engines_take_nchw_images(nhwc_onnx: Path, tmp_path: Path) -> None:
    job = OnnxExitsJob(nhwc_onnx, data="digits", out=tmp_path / "run", train=TrainConfig(epochs=1, batch_size=32, progress=False),
                       int8=False, profile_calls=20, rounds=5, test_samples=60, propose=1)
    onnx_exits(job)
    manifest = load_manifest(tmp_path / "run" / "engines")
    assert manifest.input.shape == ["batch", 3, SIZE, SIZE]
    assert_full_depth_is_the_file(manifest, nhwc_onnx, np.random.default_rng(7).random((4, 3, SIZE, SIZE), dtype=np.float32), nhwc=True)


def test_a_fixed_batch_model_goes_through_with_int8_engines(tmp_path: Path) -> None:
    path = fixed_batch_cnn(tmp_path / "cnn.onnx")
    job = OnnxExitsJob(path, data="digits", out=tmp_path / "run", train=TrainConfig(epochs=3, lr=0.05, progress=False),
                       profile_calls=30, rounds=10, test_samples=150, propose=1)
    _, points, proposed = measured_cuts(job)
    assert len(proposed) == 1 and all(0 < p.prefix_share < 1 for p in points)  # type: ignore[operator]
    onnx_exits(job)
    manifest = load_manifest(tmp_path / "run" / "engines")
    assert manifest.batch["max"] == 64 and "int8" in {p.precision for p in manifest.operating_points}
    assert_full_depth_is_the_file(manifest, path, np.random.default_rng(6).random((64, 1, 8, 8), dtype=np.float32))


def assert_full_depth_is_the_file(manifest, path: Path, images: np.ndarray, nhwc: bool = False) -> None:
    """With every exit off, the chain gives the file's logits at the final exit's
    temperature, and the whole-model engine gives them at temperature 1."""
    session = reference_session(path)
    name = session.get_inputs()[0].name
    fed = np.ascontiguousarray(images.transpose(0, 2, 3, 1)) if nhwc else images
    logits = np.concatenate([session.run(None, {name: fed[i : i + 1]})[0] for i in range(len(images))])
    runtime = Runtime(manifest)
    off = [None] * (runtime.num_exits - 1)
    chain = runtime.infer(images, off, whole=False)
    assert np.all(chain.exits == runtime.num_exits - 1) and np.all(chain.segment_ms)
    assert np.max(np.abs(chain.probabilities - _softmax(logits, manifest.exits[-1].temperature))) <= 1e-4
    assert runtime.has_whole
    whole = runtime.infer(images, off)
    assert np.max(np.abs(whole.probabilities - _softmax(logits))) <= 1e-4


def test_edge_onnx_lists_the_cuts_and_refuses_a_bad_one_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = fixed_batch_cnn(tmp_path / "cnn.onnx")
    assert run_main(onnx_tool.main, [str(path), "--list", "--rounds", "5", "--propose", "1"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in ("r1", "r2", "r3")) and "proposed cuts" in printed
    code = run_main(onnx_tool.main, [str(path), "--cuts", "c3", "--data", "digits", "--out", str(tmp_path / "out"), "--rounds", "5"])
    err = capsys.readouterr().err.strip().split("\r")[-1]  # after the timing's progress bar
    assert code == 1 and err.startswith("error: 'c3' is not a clean cut") and "\n" not in err
