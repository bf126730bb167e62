"""Shared artifacts for the engine/runtime tests: built once per session, copied when tampered.

One small multi-exit network (resnet8 on 1x8x8 scikit-learn digits, split after
"layer1" and "layer2") is exported with `engines.build.build_engines` into a session
temp folder. Its exit classifiers are fitted in closed form (ridge regression on
pooled features) so the exits give varied, non-trivial predictions and entropies
without a training loop.

onnxruntime caveat: once a backend with shared threads exists, the process runs on
onnxruntime's global thread pool and a session created with default options fails.
The reference sessions the tests open themselves therefore go through
`reference_session` (the exporter's own checks use the backend's `open_session`).

Mutation runs (docs/testing.md) set EDGE_TEST_BUILD_CACHE to a folder: the two builds
are then made once and copied from there in every later session, so a mutant's tests run
in seconds. The builds' own writing of the manifest is then not under test; the manifest
tests that save one themselves are.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from calibration.data import load_digits
from edge.manifest import MANIFEST_NAME, Manifest, load_manifest
from engines.adaptive import SkipAwareBatchNorm2d, make_adaptive
from engines.build import BuildOptions, build_engines
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone
from engines.slimmable import SwitchableBatchNorm2d, make_slimmable
from tests.helpers import DEPTH_POINTS, INPUT_SHAPE, MAX_BATCH, POINTS, SPLITS, TEMPERATURE, VARIANT_HEAD, fit_linear_heads, plain_resnet14

# One torch thread: on a busy 2-core machine (other jobs running) torch's OpenMP pool
# made a 12x12 resnet20 forward take ~1 s instead of ~3 ms. Results do not depend on it.
torch.set_num_threads(1)

# --- data --------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def digits_train():
    return load_digits("train")


@pytest.fixture(scope="session")
def digits_test():
    return load_digits("test")


@pytest.fixture(scope="session")
def real_images(digits_test) -> np.ndarray:
    """64 real digit images (the manifest's max batch), float32 C-contiguous."""
    return np.ascontiguousarray(digits_test.images[:MAX_BATCH], dtype=np.float32)


@pytest.fixture(scope="session")
def random_images() -> np.ndarray:
    return np.random.default_rng(123).random((40, *INPUT_SHAPE), dtype=np.float32)


# --- the network -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def net(digits_train) -> MultiExitNetwork:
    """The network every exported artifact comes from (eval mode; do not modify)."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet8", input_shape=INPUT_SHAPE, num_classes=10)
    network = MultiExitNetwork(backbone, SPLITS).eval()
    fit_linear_heads(network, digits_train.images, digits_train.labels)
    return network


# --- built artifacts ---------------------------------------------------------------------

def _build_once(out: Path, name: str, build: Callable[[Path], Manifest]) -> Manifest:
    """Build into `out`, or copy an earlier build from EDGE_TEST_BUILD_CACHE when set."""
    cache_root = os.environ.get("EDGE_TEST_BUILD_CACHE")
    if not cache_root:
        return build(out)
    cached = Path(cache_root) / name
    if not (cached / MANIFEST_NAME).is_file():
        shutil.rmtree(cached, ignore_errors=True)
        build(cached)
    shutil.copytree(cached, out, dirs_exist_ok=True)
    return load_manifest(out)


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, digits_test):
    """(the manifest build_engines returned, its folder). Read-only: copy before tampering."""
    out = tmp_path_factory.mktemp("built")
    manifest = _build_once(out, "built", lambda folder: build_engines(
        request.getfixturevalue("net"), folder, digits_test.classes, digits_test.images[:16], points=POINTS,
        options=BuildOptions(name="digits-resnet8", max_batch=MAX_BATCH),
    ))
    return manifest, out


@pytest.fixture(scope="session")
def built_dir(built) -> Path:
    return built[1]


@pytest.fixture
def built_copy(built_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the built folder that a test may tamper with."""
    return Path(shutil.copytree(built_dir, tmp_path / "engines"))


# --- independent onnxruntime reference ---------------------------------------------------


# --- extra exports, made up front with the build -----------------------------------------


@pytest.fixture(scope="session")
def temperature_export(tmp_path_factory: pytest.TempPathFactory, digits_test):
    """Segment 0 of a net with a conv + max-pool + hidden exit head, exported at temperature 2.

    Returns (torch segment, ExportedGraph).
    """
    from engines.export import ExportableSegment, export_module
    from engines.heads import HeadSpec

    torch.manual_seed(1)
    backbone = create_backbone("resnet8", input_shape=INPUT_SHAPE, num_classes=10)
    variant = MultiExitNetwork(backbone, SPLITS, HeadSpec(**VARIANT_HEAD)).eval()
    with torch.no_grad():  # make the logits large enough for the temperature to matter
        for lin in (m for m in variant.exit_heads.modules() if isinstance(m, torch.nn.Linear)):
            lin.weight.mul_(5.0)
    segment = variant.segments[0]
    out = tmp_path_factory.mktemp("temperature") / "segment_0_t2.onnx"
    example = torch.from_numpy(digits_test.images[:3])
    wrapped = ExportableSegment(segment, TEMPERATURE)
    graph = export_module(wrapped, example, out, "input", wrapped.output_names())
    return segment, graph


@pytest.fixture(scope="session")
def export_check_results(built, net, digits_test) -> dict[str, Any]:
    """What the build's own torch-vs-onnx checks say for the real net and a perturbed copy."""
    import copy

    from engines.build import ExportMismatchError, check_segments
    from engines.export import ExportableSegment, ExportedGraph, TensorSpec, exportable_segments, max_abs_diff_vs_torch

    manifest, folder = built
    graphs = [
        ExportedGraph(folder / s.file, [TensorSpec(s.input.name, s.input.shape)],
                      [TensorSpec(o.name, o.shape) for o in s.outputs])
        for s in manifest.segments
    ]
    real = np.ascontiguousarray(digits_test.images[:6])
    diffs = []
    x = torch.from_numpy(real)
    for segment, graph in zip(net.segments, graphs):
        diffs.append(max_abs_diff_vs_torch(ExportableSegment(segment), graph, [x.numpy()]))
        with torch.no_grad():
            x = segment(x)[0]
    perturbed = copy.deepcopy(net)
    with torch.no_grad():
        perturbed.exit_heads[1][-1].bias[3] += 0.5  # only exit 1 (segment_1) changes
    try:
        check_segments(perturbed, exportable_segments(perturbed), graphs, real, 1)
        mismatch: Exception | None = None
    except ExportMismatchError as exc:
        mismatch = exc
    check_segments(net, exportable_segments(net), graphs, real, 1)  # the real net passes (raises otherwise)
    return {"diffs": diffs, "mismatch": mismatch}


# --- the adaptive-depth digits network ------------------------------------------------------

@pytest.fixture(scope="session")
def adaptive_net(digits_train) -> MultiExitNetwork:
    """Skip BNs unlike the full ones (as after training), so an engine using the wrong set fails."""
    backbone = make_adaptive(plain_resnet14())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for switch in (m for m in backbone.modules() if isinstance(m, SkipAwareBatchNorm2d)):
            switch.skip.running_mean.add_(0.2 * torch.randn(switch.skip.running_mean.shape, generator=generator))
            switch.skip.running_var.mul_(1.5)
            switch.skip.weight.mul_(0.8)
    net = MultiExitNetwork(backbone, ["layer1", "layer2"]).eval()
    fit_linear_heads(net, digits_train.images, digits_train.labels)
    return net


@pytest.fixture(scope="session")
def slim_net(digits_train) -> MultiExitNetwork:
    """Adaptive width at half the inner channels; narrow BNs unlike the wide ones' first
    channels (as after training), so an engine using the wrong set fails."""
    backbone = make_slimmable(plain_resnet14(), 0.5)
    generator = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for switch in (m for m in backbone.modules() if isinstance(m, SwitchableBatchNorm2d)):
            switch.slim.running_mean.add_(0.2 * torch.randn(switch.slim.running_mean.shape, generator=generator))
            switch.slim.running_var.mul_(1.5)
    net = MultiExitNetwork(backbone, ["layer1", "layer2"]).eval()
    fit_linear_heads(net, digits_train.images, digits_train.labels)
    return net


@pytest.fixture(scope="session")
def adaptive_built(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest, digits_test) -> Path:
    out = tmp_path_factory.mktemp("adaptive")
    _build_once(out, "adaptive", lambda folder: build_engines(
        request.getfixturevalue("adaptive_net"), folder, digits_test.classes, digits_test.images[:16],
        points=DEPTH_POINTS, options=BuildOptions(name="digits-adn", max_batch=64),
    ))
    return out
