"""The TensorRT path's logic that needs no GPU: shapes, precision per version, compatibility,
Q/DQ checks, buffer sizing, device gathers, plan bookkeeping, the onnxruntime GPU providers."""

from __future__ import annotations

import dataclasses
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import pytest

from edge.atomic import sha256_file
from edge.backends.onnxruntime_backend import OnnxRuntimeBackend, gpu_providers
from edge.backends.tensorrt_backend import buffer_bytes, plan_batch_range, plan_for, plan_key, row_copies
from edge.backends.tensorrt_device import check_compatible, device_record
from edge.errors import ManifestError, MissingDependencyError, UserError
from edge.manifest import load_manifest
from engines.tensorrt_build import (
    PrecisionPlan,
    TrtBuildOptions,
    engine_files,
    plan_batch,
    plan_name,
    precision_plan,
    profile_shapes,
    qdq_problems,
)
from tests.helpers import read_manifest_json, write_manifest_json

FLAGS_10 = ["FP16", "INT8", "GPU_FALLBACK", "REFIT"]
FLAGS_11 = ["GPU_FALLBACK", "REFIT"]


def test_profile_shapes_come_from_the_manifest_batch_sizes() -> None:
    assert profile_shapes(["batch", 16, 28, 28], {"min": 1, "opt": 4, "max": 64}) == ((1, 16, 28, 28), (4, 16, 28, 28), (64, 16, 28, 28))
    with pytest.raises(ManifestError, match="1 <= min <= opt <= max"):
        profile_shapes(["batch", 3], {"min": 8, "opt": 1, "max": 64})
    with pytest.raises(ManifestError, match="exactly one 'batch'"):
        profile_shapes([1, 3, 8, 8], {"max": 4})


@pytest.mark.parametrize("precision, version, flags, variants, expected", [
    ("fp32", "10.3.0", FLAGS_10, [], PrecisionPlan("fp32", ())),
    ("fp16", "10.3.0", FLAGS_10, [], PrecisionPlan("fp32", ("FP16",))),
    ("fp16", "11.4.1", FLAGS_11, ["fp16"], PrecisionPlan("fp16", ())),
    ("fp16", "10.3.0", FLAGS_10, ["fp16"], PrecisionPlan("fp16", ())),  # a typed graph beats the deprecated flag
    ("int8", "10.3.0", FLAGS_10, ["int8"], PrecisionPlan("int8", ("INT8",))),
    ("int8", "11.4.1", FLAGS_11, ["int8"], PrecisionPlan("int8", ())),
])
def test_precision_is_reached_the_way_each_tensorrt_version_allows(precision, version, flags, variants, expected) -> None:
    assert precision_plan(precision, version, flags, variants) == expected


def test_precisions_a_version_cannot_reach_say_what_is_needed() -> None:
    with pytest.raises(UserError, match="no FP16 builder flag .removed in 11.x."):
        precision_plan("fp16", "11.4.1", FLAGS_11, [])
    with pytest.raises(UserError, match="symmetric Q/DQ variant"):
        precision_plan("int8", "10.3.0", FLAGS_10, [])
    with pytest.raises(UserError, match="DLA runs FP16 or INT8 only"):
        TrtBuildOptions("fp32", dla_core=0)


def test_plans_from_another_tensorrt_or_gpu_are_refused_with_the_reason() -> None:
    recorded = device_record("10.3.0", "Orin", "8.7")
    check_compatible(recorded, "10.3.0", "Orin", "8.7")
    with pytest.raises(ManifestError, match="built with TensorRT 10.3.0, this is 10.7.0"):
        check_compatible(recorded, "10.7.0", "Orin", "8.7")
    with pytest.raises(ManifestError, match="compute capability 8.7, this GPU is 8.6.*rebuild them here"):
        check_compatible(recorded, "10.3.0", "NVIDIA GeForce RTX 3090", "8.6")
    with pytest.raises(ManifestError, match="no TensorRT plans"):
        check_compatible(None, "10.3.0", "Orin", "8.7")


def quantize_in_a_fresh_process(source: str, target: str, images: list[np.ndarray], symmetric: bool) -> None:
    """quantize_static opens its own onnxruntime session, which this test process's global
    thread pool would refuse (see conftest): it runs in a spawned process."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.items = iter(images)

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self.items, None)
            return None if x is None else {"input": x}

    extra = {"ActivationSymmetric": True, "WeightSymmetric": True} if symmetric else {}
    quantize_static(source, target, Reader(), quant_format=QuantFormat.QDQ, op_types_to_quantize=["Conv"], extra_options=extra,
                    activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8, weight_type=QuantType.QInt8)


def test_tensorrt_needs_symmetric_int8_qdq(built_dir: Path, digits_test, tmp_path: Path) -> None:
    """The INT8 variants made for onnxruntime on the CPU (uint8 activations) are refused;
    a symmetric int8 quantization of the same graph is accepted."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    import onnx

    images = [digits_test.images[i:i + 1].astype(np.float32) for i in range(8)]
    results = {}
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        for name, symmetric in [("asym", False), ("sym", True)]:
            target = tmp_path / f"{name}.onnx"
            pool.submit(quantize_in_a_fresh_process, str(built_dir / "segment_0.onnx"), str(target), images, symmetric).result()
            results[name] = qdq_problems(onnx.load(str(target)))
    assert results["asym"] and "uint8" in results["asym"][0]
    assert results["sym"] == []


def test_buffers_are_sized_for_the_largest_batch() -> None:
    assert buffer_bytes(["batch", 16, 28, 28], 64) == 64 * 16 * 28 * 28 * 4
    assert buffer_bytes(["batch"], 8, "int64") == 64


def test_row_gathers_merge_consecutive_rows() -> None:
    assert row_copies([1, 2, 3, 7, 9], 100) == [(100, 0, 300), (700, 300, 100), (900, 400, 100)]
    assert row_copies([0, 1], 10) == [(0, 0, 20)]
    assert row_copies([], 10) == []


def test_plans_are_recorded_hashed_and_found_per_engine_file(built_copy: Path) -> None:
    manifest = load_manifest(built_copy)
    plan = precision_plan("fp32", "10.3.0", FLAGS_10, [])
    files = [f for f, _ in engine_files(manifest, plan)]
    assert files == [s.file for s in manifest.segments]
    data = read_manifest_json(built_copy)
    plans = {}
    for f in files:  # stand-in bytes: what is under test is the manifest's bookkeeping, not TensorRT
        (built_copy / plan_name(f, "fp32")).write_bytes(f.encode())
        plans[plan_key(f, "fp32")] = {"file": plan_name(f, "fp32"), "sha256": sha256_file(built_copy / plan_name(f, "fp32")), "precision": "fp32"}
    data["tensorrt"] = device_record("10.3.0", "Orin", "8.7") | {"plans": plans}
    write_manifest_json(built_copy, data)
    loaded = load_manifest(built_copy)
    assert plan_for(loaded, loaded.segments[1], "fp32", False) == "segment_1.fp32.plan"
    with pytest.raises(ManifestError, match="no TensorRT plan segment_1.onnx@fp16"):
        plan_for(loaded, loaded.segments[1], "fp32", False, plan_precision="fp16")  # an fp16 plan of the fp32 file: not built
    from edge.backends.tensorrt_backend import TensorRTBackend

    assert TensorRTBackend().supports(loaded, "fp32") and not TensorRTBackend("fp16").supports(loaded, "fp32")
    (built_copy / "segment_2.fp32.plan").write_bytes(b"changed")
    with pytest.raises(ManifestError, match="segment_2.fp32.plan"):
        load_manifest(built_copy)


def test_adaptive_manifests_get_a_plan_for_every_base_variant_too(adaptive_built: Path) -> None:
    manifest = load_manifest(adaptive_built)
    files = [f for f, _ in engine_files(manifest, PrecisionPlan("fp32", ()))]
    assert files == [f"segment_{k}.onnx" for k in range(3)] + [f"segment_{k}.base.onnx" for k in range(3)]


def test_onnxruntime_gpu_providers_are_configured_and_a_missing_one_is_named(built_dir: Path) -> None:
    providers = gpu_providers("tensorrt", cache_dir="/tmp/trt", fp16=True, dla_core=0)
    name, options = providers[0]
    assert name == "TensorrtExecutionProvider" and options["trt_fp16_enable"] and options["trt_engine_cache_path"] == "/tmp/trt"
    assert options["trt_dla_enable"] and providers[-1] == "CPUExecutionProvider"
    assert gpu_providers("cuda") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    backend = OnnxRuntimeBackend(providers=providers)
    with pytest.raises(MissingDependencyError, match="no \\['TensorrtExecutionProvider', 'CUDAExecutionProvider'\\]"):
        backend.load(load_manifest(built_dir))


def test_the_device_check_says_what_it_needs(built_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import device_check
    from tools._cli import run_main

    pytest.importorskip("sklearn", reason="scikit-learn (the 'test' extra) is not installed")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is installed here: the device check would run for real")
    except ImportError:
        pass
    assert run_main(device_check.main, ["--engines", str(built_dir), "--data", "digits"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "TensorRT is not installed" in err


# --- no GPU, no driver: one line each ------------------------------------------------------------

def _pycuda_package(root: Path, driver_py: str) -> None:
    """A package laid out as pycuda is (driver.py re-exports the compiled _driver)."""
    (root / "pycuda").mkdir()
    (root / "pycuda" / "__init__.py").write_text("")
    (root / "pycuda" / "driver.py").write_text(driver_py)


@pytest.fixture
def fresh_pycuda(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    import edge.backends.tensorrt_device as device

    for name in [m for m in sys.modules if m == "pycuda" or m.startswith("pycuda.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setattr(device, "_PRIMARY", None)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_pycuda_without_the_nvidia_driver_says_so(fresh_pycuda: Path) -> None:
    """pycuda's compiled _driver links libcuda.so.1, which only a driver install has: the
    loader's own error, from a real shared object linked the same way."""
    from edge.backends.tensorrt_device import NoDeviceError, cuda_context

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to link a stand-in of pycuda's _driver against libcuda.so.1")
    _pycuda_package(fresh_pycuda, "from pycuda._driver import *  # noqa\n")
    build = fresh_pycuda / "build"
    build.mkdir()
    (build / "cuda.c").write_text("int cuInit(unsigned int flags) { return 0; }\n")
    (build / "driver.c").write_text("extern int cuInit(unsigned int); int touch(void) { return cuInit(0); }\n")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(build / "libcuda.so.1"), str(build / "cuda.c"), "-Wl,-soname,libcuda.so.1"], check=True)
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    subprocess.run(["gcc", "-shared", "-fPIC", "-o", str(fresh_pycuda / "pycuda" / f"_driver{suffix}"), str(build / "driver.c"),
                    str(build / "libcuda.so.1")], check=True)
    shutil.rmtree(build)  # the driver is not installed
    with pytest.raises(NoDeviceError, match=r"pycuda is installed but the NVIDIA driver is not \(libcuda\.so\.1"):
        cuda_context()


def test_a_driver_that_sees_no_gpu_is_one_line(fresh_pycuda: Path) -> None:
    # cuInit's failure comes as pycuda._driver.RuntimeError, which is not the builtin one
    _pycuda_package(fresh_pycuda, (
        "class Error(Exception): pass\n"
        "class RuntimeError(Error): pass\n"
        "def init(flags=0):\n    raise RuntimeError('cuInit failed: no CUDA-capable device is detected')\n"
    ))
    from edge.backends.tensorrt_device import NoDeviceError, cuda_context

    with pytest.raises(NoDeviceError, match="CUDA cannot start .*no CUDA-capable device is detected"):
        cuda_context()


def test_pycuda_missing_is_named_as_missing(monkeypatch: pytest.MonkeyPatch, fresh_pycuda: Path) -> None:
    monkeypatch.setitem(sys.modules, "pycuda", None)  # import pycuda raises ModuleNotFoundError
    from edge.backends.tensorrt_device import cuda_context

    with pytest.raises(MissingDependencyError, match="pycuda is not installed"):
        cuda_context()


# --- DLA plans take one batch size: the device check feeds them that --------------------------------

def test_a_dla_plan_serves_the_opt_batch_only_and_records_it() -> None:
    batch = {"min": 1, "opt": 2, "max": 64}
    assert plan_batch(batch, TrtBuildOptions("fp16")) == {"min": 1, "opt": 2, "max": 64}
    assert plan_batch(batch, TrtBuildOptions("fp16", dla_core=0)) == {"min": 2, "opt": 2, "max": 2}


def test_the_loaded_plans_batch_range_is_what_every_plan_takes(built_dir: Path) -> None:
    manifest = load_manifest(built_dir)
    files = [plan_name(s.file, "fp16") for s in manifest.segments]
    assert plan_batch_range(manifest, files) == (1, manifest.batch["max"])  # nothing recorded: the manifest's
    plans = {f"{s.file}@fp16": {"file": f, "batch": {"min": 1, "opt": 1, "max": 1}} for s, f in zip(manifest.segments, files)}
    dla = dataclasses.replace(manifest, tensorrt={"plans": plans})
    assert plan_batch_range(dla, files) == (1, 1)
    plans[f"{manifest.segments[0].file}@fp16"]["batch"] = {"min": 4, "opt": 4, "max": 4}
    with pytest.raises(ManifestError, match="no common batch size"):
        plan_batch_range(dataclasses.replace(manifest, tensorrt={"plans": plans}), files)


def test_the_device_check_compares_in_batches_the_plans_take(built_dir: Path, real_images: np.ndarray) -> None:
    from engines.device_check import check_batch, compare_segments

    class Recording(OnnxRuntimeBackend):  # the device side, recording the batches it is fed
        def __init__(self) -> None:
            super().__init__()
            self.fed: list[int] = []

        def run(self, index: int, features: np.ndarray, criterion: str = "entropy"):  # type: ignore[no-untyped-def]
            self.fed.append(len(features))
            return super().run(index, features, criterion)

    manifest = load_manifest(built_dir)
    device, reference = Recording(), OnnxRuntimeBackend()
    device.load(manifest)
    reference.load(manifest)
    images = real_images[:8]
    assert check_batch(8, (1, 1)) == 1 and check_batch(8, (1, 64)) == 8 and check_batch(8, (4, 4)) == 4
    with pytest.raises(UserError, match="only 2 images"):
        check_batch(2, (4, 4))
    results = compare_segments(device, reference, manifest.num_exits, images, 1e-6, check_batch(8, (1, 1)))  # a DLA plan
    assert set(device.fed) == {1} and len(device.fed) == 8 * manifest.num_exits
    assert all(r["within_tolerance"] and r["max_abs_diff"] == 0.0 for r in results)
    device.close()
    reference.close()


# --- a timing cache from another device is not used ------------------------------------------------

class BuilderConfigStandIn:
    """IBuilderConfig's two timing-cache calls as TensorRT answers them (their signatures
    are checked against the real 10.3/10.13/11.4 bindings in test_tensorrt_api): a cache
    from another device attaches only when mismatches are ignored."""

    def __init__(self, device: bytes) -> None:
        self.device = device

    def create_timing_cache(self, serialized_timing_cache: bytes) -> bytes:
        return serialized_timing_cache or self.device

    def set_timing_cache(self, cache: bytes, ignore_mismatch: bool) -> bool:
        return cache == self.device or ignore_mismatch


class BuilderStandIn:
    def __init__(self, device: bytes) -> None:
        self.device = device

    def create_builder_config(self) -> BuilderConfigStandIn:
        return BuilderConfigStandIn(self.device)


def test_a_timing_cache_from_another_device_is_replaced_by_a_new_one(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from engines.tensorrt_build import _timing_cache

    cache_file = tmp_path / "timing.cache"
    cache_file.write_bytes(b"orin-agx")
    assert _timing_cache(BuilderStandIn(b"orin-agx"), cache_file) == b"orin-agx"  # this device's: used
    assert _timing_cache(BuilderStandIn(b"orin-nano"), cache_file) == b"orin-nano"  # another's: a new one
    assert "timing cache from another device" in caplog.text
    assert _timing_cache(BuilderStandIn(b"orin-nano"), tmp_path / "none.cache") == b"orin-nano"
