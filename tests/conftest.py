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
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from calibration.data import load_digits
from edge.manifest import MANIFEST_NAME, OperatingPoint
from engines.build import BuildOptions, build_engines
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone

INPUT_SHAPE = (1, 8, 8)
SPLITS = ["layer1", "layer2"]
MAX_BATCH = 64
# One torch thread: on a busy 2-core machine (other jobs running) torch's OpenMP pool
# made a 12x12 resnet20 forward take ~1 s instead of ~3 ms. Results do not depend on it.
torch.set_num_threads(1)

POINTS = [
    OperatingPoint("full", [None, None]),
    OperatingPoint("eager", [1e9, 1e9]),
    OperatingPoint("late", [None, 1e9]),
]
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

def fit_linear_heads(net: MultiExitNetwork, images: np.ndarray, labels: np.ndarray, scale: float = 3.0) -> None:
    """Ridge-regress every exit's last Linear onto one-hot labels (no training loop)."""
    linears = [head[-1] for head in net.exit_heads] + [net.backbone.head[-1]]
    captured: dict[int, torch.Tensor] = {}
    hooks = [
        lin.register_forward_hook(lambda m, inputs, out, k=k: captured.__setitem__(k, inputs[0]))
        for k, lin in enumerate(linears)
    ]
    try:
        with torch.no_grad():
            net.eval()(torch.from_numpy(images))
    finally:
        for hook in hooks:
            hook.remove()
    targets = torch.nn.functional.one_hot(torch.from_numpy(labels), 10).double() * 2 - 1
    with torch.no_grad():
        for k, lin in enumerate(linears):
            x = captured[k].double()
            x = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], 1)
            w = torch.linalg.solve(x.T @ x + 0.1 * torch.eye(x.shape[1], dtype=x.dtype), x.T @ targets)
            lin.weight.copy_(w[:-1].T * scale)
            lin.bias.copy_(w[-1] * scale)


@pytest.fixture(scope="session")
def net(digits_train) -> MultiExitNetwork:
    """The network every exported artifact comes from (eval mode; do not modify)."""
    torch.manual_seed(0)
    backbone = create_backbone("resnet8", input_shape=INPUT_SHAPE, num_classes=10)
    network = MultiExitNetwork(backbone, SPLITS).eval()
    fit_linear_heads(network, digits_train.images, digits_train.labels)
    return network


# --- built artifacts ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory, net, digits_test):
    """(manifest returned by build_engines, its folder). Read-only: copy before tampering."""
    out = tmp_path_factory.mktemp("built")
    manifest = build_engines(
        net, out, digits_test.classes, digits_test.images[:16], points=POINTS,
        options=BuildOptions(name="digits-resnet8", max_batch=MAX_BATCH),
    )
    return manifest, out


@pytest.fixture(scope="session")
def built_dir(built) -> Path:
    return built[1]


@pytest.fixture
def built_copy(built_dir: Path, tmp_path: Path) -> Path:
    """A private copy of the built folder that a test may tamper with."""
    return Path(shutil.copytree(built_dir, tmp_path / "engines"))


def read_manifest_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text())


def write_manifest_json(folder: Path, data: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


# --- independent onnxruntime reference ---------------------------------------------------

def reference_session(path: Path):
    """A plain onnxruntime session, whatever thread-pool mode the process is in."""
    import onnxruntime as ort

    from edge.backends import onnxruntime_backend

    def make(per_session: bool):
        options = ort.SessionOptions()
        options.log_severity_level = 3
        if not per_session:
            options.use_per_session_threads = False
        return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])

    if onnxruntime_backend._global_pool_threads:
        return make(per_session=False)
    try:
        return make(per_session=True)
    except Exception as exc:  # the global pool was switched on elsewhere
        if "global thread pool" not in str(exc):
            raise
        return make(per_session=False)


def run_named(session, inputs: np.ndarray) -> dict[str, np.ndarray]:
    """Run a session on its single input and return its outputs by name."""
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(None, {session.get_inputs()[0].name: inputs})))


# --- extra exports, made up front with the build -----------------------------------------

TEMPERATURE = 2.0
VARIANT_HEAD = {"conv_channels": 8, "pool": "max", "hidden": 16}


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
