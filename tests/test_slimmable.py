"""Adaptive width: stages that run at full or narrow inner width, trained by the sandwich
rule, each width exported as its own dense engine (the routing itself is tested with
the depth gates, tests/test_depth_gates.py, on both kinds of network)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from calibration.adaptive import depth_accuracies
from calibration.data import Dataset
from calibration.dynamic_depth import merged_results
from calibration.slimmable import Sandwich, train_slimmable
from calibration.train import TrainConfig
from edge.errors import ManifestError
from edge.manifest import OperatingPoint, load_manifest
from edge.runtime import Runtime
from engines.adaptive import AdaptiveBackbone, AdaptiveDepthError, make_adaptive
from engines.backbone import BlockBackbone
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone
from engines.slimmable import make_slimmable
from tests.helpers import INPUT_SHAPE, plain_resnet14
from tools import train_adaptive as train_tool
from tools._cli import run_main

POINTS = [OperatingPoint("wide", [None, None], depth="FFF"), OperatingPoint("narrow", [None, None], depth="TTT"),
          OperatingPoint("mixed", [None, None], depth="TFT")]


@pytest.fixture(scope="module")
def slim_built(slim_net: MultiExitNetwork, digits_test: Dataset, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("slim")
    build_engines(slim_net, out, digits_test.classes, digits_test.images[:16], points=POINTS, options=BuildOptions(name="digits-slim", include_static=False))
    return out


def conv_weights(path: Path) -> list[tuple[int, ...]]:
    graph = onnx.load(path).graph
    shapes = {i.name: tuple(i.dims) for i in graph.initializer}
    ops = {n.op_type for n in graph.node}
    assert "Slice" not in ops, f"{path.name}: a narrow engine keeps no slices of the wide weights"
    assert "BatchNormalization" not in ops, f"{path.name}: every BN folds into its convolution"
    return [shapes[n.input[1]] for n in graph.node if n.op_type == "Conv"]


def test_each_narrow_stage_is_a_dense_engine_of_the_smaller_layers(slim_built: Path) -> None:
    manifest = load_manifest(slim_built)
    assert manifest.stage_variants == "width" and all(s.base is not None for s in manifest.segments)
    for segment in manifest.segments:
        assert segment.base is not None
        wide, narrow = conv_weights(slim_built / segment.file), conv_weights(slim_built / segment.base["file"])
        assert len(wide) == len(narrow)  # the same layers
        assert sum(np.prod(s) for s in narrow) < 0.75 * sum(np.prod(s) for s in wide)
        inner = {s[0] for s in narrow} - {s[0] for s in wide}  # conv1's outputs: half the block's channels
        assert inner and all(2 * c in {s[0] for s in wide} for c in inner)


def test_every_width_configuration_gives_what_torch_gives(slim_net: MultiExitNetwork, slim_built: Path, real_images: np.ndarray) -> None:
    runtime = Runtime(slim_built)
    backbone = slim_net.backbone
    assert isinstance(backbone, AdaptiveBackbone)
    try:
        for widths in ("FFF", "TTT", "TFT", "FTF"):
            backbone.set_depth(widths)
            with torch.no_grad():
                expected = torch.softmax(slim_net(torch.from_numpy(real_images[:16]))[-1], dim=1).numpy()
            got = runtime.infer(real_images[:16], [None, None], depth=widths).probabilities
            np.testing.assert_allclose(got, expected, atol=1e-5, err_msg=widths)
    finally:
        backbone.set_depth("FFF")
    wide, narrow = (runtime.infer(real_images[:16], [None, None], depth=d).probabilities for d in ("FFF", "TTT"))
    assert np.abs(wide - narrow).max() > 1e-3  # the narrow engines are not the wide ones


def test_a_manifest_says_what_its_base_variants_are(slim_built: Path, tmp_path: Path) -> None:
    data = json.loads((slim_built / "manifest.json").read_text())
    for engine in slim_built.glob("*.onnx"):
        (tmp_path / engine.name).symlink_to(engine)
    (tmp_path / "manifest.json").write_text(json.dumps(data | {"stage_variants": "deep"}))
    with pytest.raises(ManifestError, match=r"'stage_variants' must be one of \('depth', 'width'\), got 'deep'"):
        load_manifest(tmp_path)
    del data["stage_variants"]  # a manifest from before: its base variants were depth's
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path).stage_variants == "depth"


def test_a_checkpoint_rebuilds_the_narrow_network(slim_net: MultiExitNetwork, real_images: np.ndarray, tmp_path: Path) -> None:
    spec = ModelSpec("resnet14", {"input_shape": list(INPUT_SHAPE)}, [str(i) for i in range(10)], ["layer1", "layer2"], width=0.5)
    save_checkpoint(tmp_path / "slim.pt", spec, slim_net)
    loaded_spec, loaded, _ = load_checkpoint(tmp_path / "slim.pt")
    assert loaded_spec.width == 0.5 and isinstance(loaded, MultiExitNetwork)
    x = torch.from_numpy(real_images[:8])
    for net in (slim_net, loaded):
        net.backbone.set_depth("TFT")  # type: ignore[operator]
    with torch.no_grad():
        torch.testing.assert_close(loaded(x)[-1], slim_net(x)[-1])
    slim_net.backbone.set_depth("FFF")  # type: ignore[operator]


def conv_bn_blocks() -> BlockBackbone:
    """A network whose stages hold plain conv-BN-ReLU blocks: nothing inside to narrow."""
    def block() -> nn.Module:
        return nn.Sequential(nn.Conv2d(4, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU())
    return BlockBackbone(nn.Conv2d(1, 4, 3, padding=1), [block() for _ in range(4)], nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 10)),
                         ["layer1.0", "layer1.1", "layer2.0", "layer2.1"], {"layer1": 1, "layer2": 3}, INPUT_SHAPE, {"mean": [0.5], "std": [0.25]})


def test_a_network_that_cannot_narrow_is_refused_with_the_reason() -> None:
    with pytest.raises(AdaptiveDepthError, match=r"stage layer1: block 0 \(layer1.0\) is not a conv1-bn1-conv2-bn2 residual block, so it cannot run narrow"):
        make_slimmable(conv_bn_blocks(), 0.5)
    for width in (0.0, 1.0):
        with pytest.raises(AdaptiveDepthError, match=f"0 < width < 1, got {width}"):
            make_slimmable(plain_resnet14(), width)


def test_the_training_tool_refuses_depth_and_width_together(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    argv = ["--arch", "resnet14", "--data", "digits", "--out", str(tmp_path), "--epochs", "1", "--width", "0.5"]
    assert run_main(train_tool.main, [*argv, "--skippable", "1,1,1"]) == 1
    assert "give --skippable (adaptive depth) or --width (adaptive width), not both" in capsys.readouterr().err


def test_the_sandwich_rule_trains_every_width_configuration(digits_train: Dataset, digits_test: Dataset) -> None:
    torch.manual_seed(0)
    backbone = make_slimmable(create_backbone("resnet8", input_shape=INPUT_SHAPE, num_classes=10), 0.25)
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.1, progress=False)
    train_slimmable(backbone, digits_train, cfg, Sandwich(random_configs=2))
    accuracies = depth_accuracies(backbone.eval(), digits_test)
    assert backbone.depth == "FFF" and len(accuracies) == 8
    assert min(accuracies.values()) > 0.85, accuracies  # the narrowest too: it learned from the widest in the same steps
    with pytest.raises(ValueError, match="the sandwich rule trains a network of narrow and wide stages"):
        train_slimmable(make_adaptive(plain_resnet14()), digits_train, cfg)


def test_the_results_file_keeps_the_other_kind_and_replaces_a_broken_one(tmp_path: Path) -> None:
    results = tmp_path / "dynamic.json"
    assert merged_results(results, "width", {"w": 1}) == {"width": {"w": 1}}
    results.write_text(json.dumps({"width": {"w": 1}, "depth": {"d": 1}}))
    assert list(merged_results(results, "depth", {"d": 2}).items()) == [("depth", {"d": 2}), ("width", {"w": 1})]
    results.write_text("{not json")
    assert merged_results(results, "depth", {"d": 3}) == {"depth": {"d": 3}}
