"""What the tests share besides fixtures (those are in conftest.py): the digits network's
constants, its operating points, closed-form exit heads, manifest JSON, and reference
onnxruntime sessions independent of the runtime's backend."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edge.manifest import MANIFEST_NAME, OperatingPoint
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone

INPUT_SHAPE = (1, 8, 8)
SPLITS = ["layer1", "layer2"]
MAX_BATCH = 64
POINTS = [
    OperatingPoint("full", [None, None]),
    OperatingPoint("eager", [1e9, 1e9]),
    OperatingPoint("late", [None, 1e9]),
]
TEMPERATURE = 2.0
VARIANT_HEAD = {"conv_channels": 8, "pool": "max", "hidden": 16}

DEPTH_POINTS = [
    OperatingPoint("full", [None, None]),
    OperatingPoint("base", [None, None], depth="TTT"),
    OperatingPoint("mixed-eager", [0.5, 0.5], depth="TFT"),
]


def plain_resnet14(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("resnet14", input_shape=INPUT_SHAPE, num_classes=10).eval()


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


def read_manifest_json(folder: Path) -> dict[str, Any]:
    return json.loads((folder / MANIFEST_NAME).read_text())


def write_manifest_json(folder: Path, data: dict[str, Any]) -> None:
    (folder / MANIFEST_NAME).write_text(json.dumps(data, indent=2))


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
