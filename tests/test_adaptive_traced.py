"""Adaptive depth on a user's traced network: stages found in the graph, residual
shape-keeping blocks skippable, engines per depth, and the reason where it does not apply."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.manifest import OperatingPoint, load_manifest
from edge.runtime import Runtime
from engines.adaptive import AdaptiveBackbone, AdaptiveDepthError, SkipAwareBatchNorm2d, adaptive_depth_summary, depth_stages, make_adaptive
from engines.backbone import Normalize
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from engines.intake.sources import build_backbone, traced_network
from engines.partition import MultiExitNetwork
from tools import intake
from tools._cli import run_main

pytest.importorskip("torchvision", reason="the 'vision' extra is not installed")
SHAPE = (3, 32, 32)
RESNET = "torchvision:resnet18"
CLASSES = [str(i) for i in range(10)]


@pytest.fixture(scope="module")
def resnet18() -> tuple[torch.nn.Module, AdaptiveBackbone]:
    """torchvision's ResNet-18 at its standard stem, and its adaptive form (own copy)."""
    torch.manual_seed(0)
    network, backbone = traced_network(RESNET, 10, SHAPE, {})
    return network.eval(), make_adaptive(copy.deepcopy(backbone)).eval()


def base_resnet18(network: torch.nn.Module, normalization: dict[str, list[float]], x: torch.Tensor) -> torch.Tensor:
    """The network with the second block of every stage left out, written by hand."""
    n = network
    x = n.maxpool(n.relu(n.bn1(n.conv1(Normalize(normalization["mean"], normalization["std"])(x)))))
    for layer in (n.layer1, n.layer2, n.layer3, n.layer4):
        x = layer[0](x)
    return n.fc(torch.flatten(n.avgpool(x), 1))


def test_a_torchvision_resnet_gets_its_four_stages_and_skips_their_second_blocks(resnet18) -> None:
    network, adaptive = resnet18
    assert adaptive.block_names == ["layer1", "layer2", "layer3", "layer4"] and adaptive.skippable == [1, 1, 1, 1]
    x = torch.rand(3, *SHAPE)
    with torch.no_grad():
        assert torch.equal(adaptive(x), network(Normalize(**adaptive.normalization)(x)))
        adaptive.set_depth("TTTT")
        try:
            torch.testing.assert_close(adaptive(x), base_resnet18(network, adaptive.normalization, x), rtol=0, atol=1e-5)
        finally:
            adaptive.set_depth("FFFF")
    # the mandatory blocks' BNs got a second set for the base depth; the user's network kept its own
    assert any(isinstance(m, SkipAwareBatchNorm2d) for m in adaptive.stages[0].mandatory.modules())
    assert not any(isinstance(m, SkipAwareBatchNorm2d) for m in network.modules())


def test_nested_stages_resolve_to_the_ones_that_can_skip() -> None:
    # EfficientNet: `features` holds `features.2`..., the first MBConv of each is cut inside its `block`
    backbone = build_backbone("torchvision:efficientnet_b0", 10, SHAPE, {})
    assert [s.name for s in depth_stages(backbone)] == [f"features.{k}" for k in range(2, 7)]
    assert make_adaptive(backbone).skippable == [1, 1, 2, 2, 3]


def test_a_network_without_residual_stages_is_refused_with_the_reason() -> None:
    backbone = build_backbone("torchvision:mobilenet_v2", 10, SHAPE, {})
    with pytest.raises(AdaptiveDepthError, match=r"features ends in features\.18, which changes the feature shape"):
        make_adaptive(backbone)
    assert "features.18" in adaptive_depth_summary(backbone)["refused"]  # what edge-intake prints


def test_skipping_a_block_without_an_identity_path_is_refused() -> None:
    backbone = build_backbone("module:tests.user_nets:TinyResNet", 10, SHAPE, {})
    assert make_adaptive(copy.deepcopy(backbone)).skippable == [0, 1, 1]  # stem, stage1, stage2
    with pytest.raises(AdaptiveDepthError, match=r"stage stem: block 2 \(stem\.2\) is not a residual block"):
        make_adaptive(backbone, [1, 1, 1])


def test_an_adaptive_traced_checkpoint_rebuilds_the_same_network(resnet18, tmp_path: Path) -> None:
    _, adaptive = resnet18
    spec = ModelSpec(RESNET, {"input_shape": list(SHAPE)}, CLASSES, skippable=[1, 1, 1, 1])
    save_checkpoint(tmp_path / "a.pt", spec, adaptive)
    _, loaded, _ = load_checkpoint(tmp_path / "a.pt")
    assert isinstance(loaded, AdaptiveBackbone)
    x = torch.rand(2, *SHAPE)
    for depth in ("FFFF", "TFTF"):
        adaptive.set_depth(depth)
        loaded.eval().set_depth(depth)
        with torch.no_grad():
            assert torch.equal(adaptive(x), loaded(x))
    adaptive.set_depth("FFFF")


def test_engines_of_a_traced_adaptive_network_match_torch_at_every_depth(resnet18, tmp_path: Path) -> None:
    _, adaptive = resnet18
    backbone = copy.deepcopy(adaptive)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # skip BNs unlike the full ones (as after training): an engine with the wrong set fails
        for switch in (m for m in backbone.modules() if isinstance(m, SkipAwareBatchNorm2d)):
            switch.skip.running_mean.add_(0.2 * torch.randn(switch.skip.running_mean.shape, generator=generator))
    net = MultiExitNetwork(backbone, ["layer1", "layer2", "layer3"]).eval()
    images = np.random.default_rng(0).random((6, *SHAPE), dtype=np.float32)
    points = [OperatingPoint("full", [None] * 3), OperatingPoint("base", [None] * 3, depth="TTTT")]
    build_engines(net, tmp_path, CLASSES, images, points=points, options=BuildOptions(name="resnet18-adn", max_batch=8))
    assert load_manifest(tmp_path).adaptive
    runtime = Runtime(tmp_path)
    try:
        for depth in ("FFFF", "TTTT", "FTTF"):
            net.backbone.set_depth(depth)
            with torch.no_grad():
                expected = torch.softmax(net(torch.from_numpy(images))[-1], dim=1).numpy()
            np.testing.assert_allclose(runtime.infer(images, depth=depth).probabilities, expected, atol=1e-4)
    finally:
        runtime.close()


def test_intake_says_whether_adaptive_depth_applies(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--input-shape", "3,32,32", "--num-classes", "10", "--rounds", "3"]
    assert run_main(intake.main, ["--source", "module:tests.user_nets:TinyResNet", *args]) == 0
    assert "adaptive depth: stages stem (skips 0), stage1 (skips 1), stage2 (skips 1)" in capsys.readouterr().out


def test_train_adaptive_takes_your_network_and_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import train_adaptive

    torch.manual_seed(0)
    weights = tmp_path / "mine.pth"
    torch.save(traced_network(RESNET, 10, SHAPE, {})[0].state_dict(), weights)
    common = ["--input-shape", "3,32,32", "--data", "digits", "--epochs", "1", "--exit-epochs", "0", "--train-samples", "64"]
    assert run_main(train_adaptive.main, ["--source", RESNET, "--weights", str(weights), *common, "--out", str(tmp_path / "adn")]) == 0
    spec, model, _ = load_checkpoint(tmp_path / "adn" / "adaptive.pt")
    assert isinstance(model, AdaptiveBackbone) and spec.backbone == RESNET and spec.skippable == [1, 1, 1, 1]
    assert spec.weights_sha256 is not None and "depth TTTT: test accuracy" in capsys.readouterr().out

    assert run_main(train_adaptive.main, ["--source", "torchvision:mobilenet_v2", *common, "--out", str(tmp_path / "no")]) == 1
    assert "error: adaptive depth does not apply" in capsys.readouterr().err
