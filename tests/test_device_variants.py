"""FP16 and symmetric INT8 ONNX variants for TensorRT 11.x: made from a real manifest,
run on onnxruntime against fp32, and within the precision rules the builder encodes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from edge.backends.onnxruntime_backend import OnnxRuntimeBackend
from edge.errors import UserError
from edge.manifest import load_manifest
from engines.device_variants import FP16, INT8, fp16_model
from engines.tensorrt_build import precision_plan, qdq_problems
from tests.api_conformance import bindings_api
from tools import device_variants
from tools._cli import run_main

pytest.importorskip("onnxconverter_common", reason="onnxconverter-common (the 'device' extra) is not installed")


@pytest.fixture(scope="module")
def device_dir(built_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("device") / "engines"
    args = ["--engines", str(built_dir), "--out", str(out), "--data", "digits", "--calibration", "64", "--test", "200"]
    assert run_main(device_variants.main, args) == 0
    return out


def test_every_segment_gets_fp16_and_symmetric_int8_variants_the_cpu_folder_keeps_its_own(device_dir: Path, built_dir: Path) -> None:
    manifest = load_manifest(device_dir)
    for segment in manifest.segments:
        assert {FP16, INT8} <= set(segment.variants)
        assert qdq_problems(onnx.load(str(manifest.path_of(segment.variants[INT8]["file"])))) == []
        graph = onnx.load(str(manifest.path_of(segment.variants[FP16]["file"]))).graph
        assert {i.type.tensor_type.elem_type for i in [*graph.input, *graph.output]} == {onnx.TensorProto.FLOAT}
        assert any(init.data_type == onnx.TensorProto.FLOAT16 for init in graph.initializer)  # the weights are fp16
    assert all(FP16 not in s.variants for s in load_manifest(built_dir).segments)


def test_the_variants_pass_the_precision_rules_of_tensorrt_11(device_dir: Path) -> None:
    manifest = load_manifest(device_dir)
    api = bindings_api("11.4")
    flags = api["api"]["BuilderFlag"]["enum"]
    variants = sorted(set.intersection(*(set(s.variants) for s in manifest.segments)))
    assert precision_plan("fp16", api["version"], flags, variants).variant == FP16
    assert precision_plan("int8", api["version"], flags, variants).variant == INT8
    assert precision_plan("int8", api["version"], flags, variants).flags == ()


def test_the_variants_agree_with_fp32_on_onnxruntime_and_their_accuracy_is_reported(device_dir: Path, real_images: np.ndarray) -> None:
    manifest = load_manifest(device_dir)
    report = json.loads((device_dir / "device_variants.json").read_text())
    assert set(report["accuracy"]) == {"fp32", FP16, INT8} and all(len(a) == manifest.num_exits for a in report["accuracy"].values())
    assert max(abs(d) for d in report["drop_pt"][FP16]) <= 1.0  # 200 digits: one image is 0.5 pt
    assert max(abs(d) for d in report["drop_pt"][INT8]) <= 5.0
    fp32, fp16 = OnnxRuntimeBackend(), OnnxRuntimeBackend()
    fp32.load(manifest)
    fp16.load(manifest, FP16)
    images = real_images[:16]
    a, b = fp32.run(0, images), fp16.run(0, images)
    assert float(np.abs(a.probs - b.probs).max()) < 1e-2 and float(np.abs(a.scores - b.scores).max()) < 2e-2
    fp32.close()
    fp16.close()


def test_the_exit_scores_stay_float32_in_the_fp16_graph(built_dir: Path) -> None:
    manifest = load_manifest(built_dir)
    converted = fp16_model(onnx.load(str(manifest.path_of(manifest.segments[0].file))))
    nodes = list(converted.graph.node)
    softmax = next(n for n in nodes if n.op_type in ("Softmax", "LogSoftmax"))
    # float32 in front of the softmax, and nothing after it goes back to float16
    assert any(n.op_type == "Cast" and softmax.input[0] in n.output for n in nodes)
    after, frontier = set(), set(softmax.output)
    while frontier:
        readers = [n for n in nodes if set(n.input) & frontier and n.name not in after]
        after |= {n.name for n in readers}
        frontier = {o for n in readers for o in n.output}
    to_half = [n.name for n in nodes if n.name in after and n.op_type == "Cast" and n.attribute[0].i == onnx.TensorProto.FLOAT16]
    assert after and not to_half


def test_an_existing_output_folder_is_refused(built_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(device_variants.main, ["--engines", str(built_dir), "--out", str(tmp_path), "--data", "digits"]) == 1
    assert "exists: device engines go to a new folder" in capsys.readouterr().err
    with pytest.raises(UserError):
        from engines.device_variants import device_engines

        device_engines(built_dir, tmp_path, [])


def test_a_convolution_with_a_bias_quantizes_symmetric_with_a_float_bias(tmp_path: Path) -> None:
    """TensorRT refuses an int32 Q/DQ bias (what onnxruntime's quantizer makes by default)."""
    import torch

    from engines.export import export_module
    from engines.quantize import QuantJob, quantize_segments

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, bias=True), torch.nn.ReLU(), torch.nn.Conv2d(8, 4, 3, bias=True))
    source = export_module(net, torch.rand(2, 3, 12, 12), tmp_path / "biased.onnx", "input", ["features"]).path
    target = tmp_path / "biased.int8.onnx"
    quantize_segments([QuantJob(source, target, "input", np.random.default_rng(0).random((16, 3, 12, 12), dtype=np.float32), "int8", symmetric=True)])
    model = onnx.load(str(target))
    assert qdq_problems(model) == [] and sum(n.op_type == "QuantizeLinear" for n in model.graph.node) >= 2
