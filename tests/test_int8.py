"""INT8 variants: real onnxruntime QDQ quantization of the session's engines, loaded and
hash-checked through the manifest, selected per operating point or per call."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest

from calibration.int8 import PRECISION, engine_table, segment_inputs, with_int8
from edge.errors import BackendError, InputError, ManifestError, UserError
from edge.manifest import MANIFEST_NAME, OperatingPoint, load_manifest, save_manifest
from edge.runtime import Runtime
from engines.quantize import QuantJob, quantize_segments
from tests.helpers import read_manifest_json, write_manifest_json


@pytest.fixture(scope="module")
def int8_dir(built_dir: Path, real_images: np.ndarray, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("int8")
    shutil.copytree(built_dir, folder, dirs_exist_ok=True)
    manifest = load_manifest(folder)
    inputs = segment_inputs(Runtime(manifest), real_images)
    quantized = with_int8(manifest, inputs, "uint8")
    points = [*quantized.operating_points, OperatingPoint("int8-full", [None, None], precision=PRECISION)]
    save_manifest(dataclasses.replace(quantized, operating_points=points), folder / MANIFEST_NAME)
    return folder


def test_int8_engines_are_quantized_and_close_to_fp32(int8_dir: Path, real_images: np.ndarray) -> None:
    import onnx

    manifest = load_manifest(int8_dir)
    for segment in manifest.segments:
        ops = {n.op_type for n in onnx.load(str(int8_dir / segment.variants[PRECISION]["file"])).graph.node}
        assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    runtime = Runtime(manifest)
    fp32 = runtime.infer(real_images, thresholds=[None, None])
    int8 = runtime.infer(real_images, thresholds=[None, None], precision=PRECISION)
    assert int8.operating_point == "custom"
    assert np.mean(int8.predictions == fp32.predictions) >= 0.9
    assert 0 < np.abs(int8.probabilities - fp32.probabilities).max() < 0.5
    runtime.set_operating_point("int8-full")
    assert runtime.precision == PRECISION
    np.testing.assert_allclose(runtime.infer(real_images).probabilities, int8.probabilities, rtol=0, atol=1e-6)


def test_engine_table_reads_the_engines_outputs(int8_dir: Path, digits_test) -> None:
    runtime = Runtime(int8_dir)
    data = digits_test.subset(slice(0, 60))
    table = engine_table(runtime, data, "fp32", ["entropy", "maxprob"], batch_size=32)
    x = np.ascontiguousarray(data.images, dtype=np.float32)
    first = runtime.backend.run(0, runtime.backend.upload(x), "maxprob")
    np.testing.assert_allclose(table.score("maxprob")[0], first.scores, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(table.predictions[0], first.probs.argmax(axis=1))
    final = runtime.infer(x, thresholds=[None, None])
    np.testing.assert_array_equal(table.predictions[-1], final.predictions)


def test_a_tampered_int8_file_is_named(int8_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(int8_dir, tmp_path, dirs_exist_ok=True)
    name = load_manifest(tmp_path).segments[1].variants[PRECISION]["file"]
    (tmp_path / name).write_bytes(b"\x08\x01garbage")
    with pytest.raises(ManifestError, match=name):
        load_manifest(tmp_path)


def test_a_point_needs_its_precision_in_every_segment(int8_dir: Path, tmp_path: Path) -> None:
    shutil.copytree(int8_dir, tmp_path, dirs_exist_ok=True)
    data = read_manifest_json(tmp_path)
    del data["segments"][2]["variants"]
    write_manifest_json(tmp_path, data)
    with pytest.raises(ManifestError, match="int8-full.*not every segment"):
        load_manifest(tmp_path)


def test_asking_for_an_absent_precision_is_an_input_error(built_dir: Path, real_images: np.ndarray) -> None:
    with pytest.raises(InputError, match="precision 'int8' is not loaded"):
        Runtime(built_dir).infer(real_images[:1], precision="int8")


def test_a_failing_quantization_names_the_segment(tmp_path: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"not onnx")
    job = QuantJob(broken, tmp_path / "out.onnx", "input", np.zeros((4, 1, 8, 8), dtype=np.float32))
    with pytest.raises(RuntimeError, match="broken.onnx: INT8 quantization failed"):
        quantize_segments([job])
    assert not (tmp_path / "out.onnx").exists()
    with pytest.raises(UserError, match="activation type"):
        quantize_segments([dataclasses.replace(job, activation="fp8")])


def test_only_the_precisions_asked_for_are_loaded(int8_dir: Path, real_images: np.ndarray) -> None:
    runtime = Runtime(int8_dir, precisions=["fp32"])
    with pytest.raises(InputError, match="precision 'int8' is not loaded"):
        runtime.infer(real_images[:1], precision=PRECISION)
    with pytest.raises(InputError, match="not loaded"):
        runtime.set_operating_point("int8-full")
    assert runtime.operating_point == "full"
    with pytest.raises(ManifestError, match="no \\['fp16'\\] engines"):
        Runtime(int8_dir, precisions=["fp16"])


def test_a_closed_runtime_says_so(int8_dir: Path, real_images: np.ndarray) -> None:
    runtime = Runtime(int8_dir)
    runtime.close()
    for precision in ("fp32", PRECISION):
        with pytest.raises(BackendError, match="no engine loaded"):
            runtime.infer(real_images[:1], thresholds=[None, None], precision=precision)
