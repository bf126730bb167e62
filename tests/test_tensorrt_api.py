"""The TensorRT code against the real bindings of TensorRT 10.3, 10.13 and 11.4, without a
GPU (tests/api_conformance.py says how), and a self-test that the check catches wrong uses."""

from __future__ import annotations

import shutil
from typing import Any

import pytest

from engines.tensorrt_build import PRECISIONS, precision_plan
from tests.api_conformance import VERSIONS, bindings_api, check_project, check_source

if shutil.which("gcc") is None:
    pytest.skip("needs gcc to build the stand-in TensorRT libraries the bindings load", allow_module_level=True)


@pytest.fixture(scope="module", params=sorted(VERSIONS))
def api(request: pytest.FixtureRequest) -> dict[str, Any]:
    return bindings_api(request.param)


def test_every_tensorrt_use_in_the_project_exists_with_a_signature_the_bindings_accept(api: dict[str, Any]) -> None:
    problems, checked = check_project(api)
    assert checked >= 70, f"only {checked} uses seen: the check no longer reads the code"  # 77 when written
    assert not problems, f"TensorRT {api['version']}:\n" + "\n".join(map(str, problems))


@pytest.mark.parametrize("precision", PRECISIONS)
def test_the_builder_flags_each_precision_asks_for_exist_in_that_version(api: dict[str, Any], precision: str) -> None:
    flags = api["api"]["BuilderFlag"]["enum"]
    for variants in ([], ["fp16", "int8"]):
        try:
            plan = precision_plan(precision, api["version"], flags, variants)
        except Exception as exc:  # refused for this version: it must say why, not fail later
            assert "variant" in str(exc), exc
            continue
        assert set(plan.flags) <= set(flags), (api["version"], plan)


WRONG_USES = [
    ("removed flag", "def f(trt, config):\n    config.set_flag(trt.BuilderFlag.FP16)\n", "trt.BuilderFlag.FP16 does not exist"),
    ("argument count", "def f(trt, config):\n    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)\n",
     "set_memory_pool_limit(...) called with 1 positional"),
    ("misspelt enum member", "def f(trt):\n    return trt.MemoryPoolType.WORKSPAC\n", "trt.MemoryPoolType.WORKSPAC does not exist"),
    ("keyword", "def f(profile):\n    profile.set_shape('x', minimum=(1,), opt=(1,), max=(1,))\n", "called with 1 positional and minimum, opt, max"),
    ("read-only property", "def f(builder):\n    builder.num_DLA_cores = 2\n", "Builder.num_DLA_cores cannot be set"),
    ("method of a returned object", "def f(builder):\n    network = builder.create_network(0)\n    network.add_identityy(None)\n",
     "INetworkDefinition has no attribute 'add_identityy'"),
    ("constructor", "def f(trt):\n    return trt.OnnxParser(None)\n", "trt.OnnxParser(...) called with 1 positional"),
]


@pytest.mark.parametrize("label, source, message", WRONG_USES, ids=[w[0] for w in WRONG_USES])
def test_the_check_catches_wrong_uses(label: str, source: str, message: str) -> None:
    api = bindings_api("11.4")
    problems, _ = check_source(source, api)
    assert any(message in str(p) for p in problems), (label, [str(p) for p in problems])


def test_feature_detected_and_correct_uses_pass() -> None:
    source = (
        "def f(trt, builder, config, logger):\n"
        "    typed = getattr(trt.NetworkDefinitionCreationFlag, 'STRONGLY_TYPED', None)\n"
        "    getattr(trt.BuilderFlag, 'FP16', None)\n"
        "    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, 1 << 20)\n"
        "    parser = trt.OnnxParser(builder.create_network(0), logger)\n"
        "    parser.parse_from_file('x.onnx')\n"
        "    config.DLA_core = 0\n"
    )
    problems, checked = check_source(source, bindings_api("11.4"))
    assert not problems and checked >= 8


# --- pycuda: every name the TensorRT backend reads, in pycuda's own sources ---------------------------

@pytest.fixture(scope="module")
def pycuda() -> set[str]:
    from tests.api_conformance import pycuda_names

    return pycuda_names()


def test_every_pycuda_name_the_backend_uses_is_defined_by_pycuda(pycuda: set[str]) -> None:
    from tests.api_conformance import check_pycuda

    problems, checked = check_pycuda(pycuda)
    assert checked >= 25, f"only {checked} uses seen"  # 27 when written
    assert not problems, "\n".join(map(str, problems))


def test_the_pycuda_check_catches_misspelt_names(pycuda: set[str]) -> None:
    from tests.api_conformance import check_pycuda

    source = "def f(cuda, lane):\n    cuda.mem_aloc(8)\n    lane.stream.synchronise()\n    cuda.Device(0).retain_primary_context()\n"
    problems, checked = check_pycuda(pycuda, {"x.py": source})
    assert checked == 4 and [str(p) for p in problems] == ["x.py:2: pycuda has no 'mem_aloc'", "x.py:3: pycuda has no 'synchronise'"]
