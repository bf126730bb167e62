"""engines.resnet / registry / torchvision_models / checkpoint: shapes, sizes, exact partitioning."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

from edge.errors import UserError
from engines.backbone import BlockBackbone
from engines.checkpoint import FORMAT, ModelSpec, load_checkpoint, save_checkpoint
from engines.heads import HeadSpec
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone, list_backbones
from engines.resnet import cifar_resnet


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def chained(net: MultiExitNetwork, x: torch.Tensor) -> torch.Tensor:
    for segment in net.segments:
        x = segment(x)[0]
    return x


@pytest.mark.parametrize(
    "depth, low, high",
    # He et al. 2016 table 6: ResNet-20 0.27M; our 1x1 projection shortcuts add ~3k.
    [(8, 0.07e6, 0.09e6), (20, 0.26e6, 0.285e6), (56, 0.84e6, 0.88e6)],
)
def test_resnet_parameter_counts(depth: int, low: float, high: float) -> None:
    count = n_params(cifar_resnet(depth, num_classes=10, input_shape=(3, 32, 32)))
    assert low <= count <= high, count


def test_parameter_count_follows_classes_and_channels() -> None:
    base = n_params(cifar_resnet(20, num_classes=10, input_shape=(3, 32, 32)))
    # Final Linear(64, classes): 65 parameters per class.
    assert n_params(cifar_resnet(20, num_classes=100, input_shape=(3, 32, 32))) - base == 90 * 65
    # First conv 3x3 -> 16 channels: 144 weights per input channel.
    assert base - n_params(cifar_resnet(20, num_classes=10, input_shape=(1, 32, 32))) == 2 * 144


@pytest.mark.parametrize("depth", [8, 20])
@pytest.mark.parametrize("input_shape", [(3, 32, 32), (1, 28, 28), (1, 8, 8), (2, 13, 9)])
def test_any_input_shape_gives_class_logits(depth: int, input_shape) -> None:
    torch.manual_seed(0)
    net = create_backbone(f"resnet{depth}", input_shape=input_shape, num_classes=7).eval()
    with torch.no_grad():
        out = net(torch.rand(3, *input_shape))
    assert out.shape == (3, 7) and torch.isfinite(out).all()
    assert net.input_shape == input_shape


@pytest.mark.parametrize("bad", [7, 9, 10, 2])
def test_invalid_resnet_depth(bad: int) -> None:
    with pytest.raises(ValueError, match="6n\\+2"):
        cifar_resnet(bad)


def test_resnet_structure_and_feature_info() -> None:
    net = create_backbone("resnet20", input_shape=(1, 12, 12), num_classes=10)
    assert net.block_names == [f"layer{s}.{i}" for s in (1, 2, 3) for i in range(3)]
    assert net.stage_ends == {"layer1": 2, "layer2": 5, "layer3": 8}
    info = net.feature_info()
    assert [f.index for f in info] == list(range(9))
    assert [f.name for f in info] == net.block_names
    assert [(f.channels, f.height, f.width) for f in info] == [(16, 12, 12)] * 3 + [(32, 6, 6)] * 3 + [(64, 3, 3)] * 3
    # feature_info matches what the blocks really produce and leaves the mode alone.
    net.eval()
    with torch.no_grad():
        x = net.stem(torch.rand(2, 1, 12, 12))
        for block, f in zip(net.blocks, info):
            x = block(x)
            assert tuple(x.shape[1:]) == (f.channels, f.height, f.width)
    net.train()
    assert net.feature_info() == info
    assert net.training and all(m.training for m in net.modules())
    net.eval()
    net.feature_info()
    assert not any(m.training for m in net.modules())


def test_resnet8_feature_info_at_odd_sizes() -> None:
    info = create_backbone("resnet8", input_shape=(1, 8, 8)).feature_info()
    assert [(f.channels, f.height, f.width) for f in info] == [(16, 8, 8), (32, 4, 4), (64, 2, 2)]
    info = create_backbone("resnet8", input_shape=(3, 13, 9)).feature_info()
    assert [(f.channels, f.height, f.width) for f in info] == [(16, 13, 9), (32, 7, 5), (64, 4, 3)]


def test_normalization_is_in_the_graph() -> None:
    net = cifar_resnet(8, input_shape=(2, 8, 8), mean=[0.1, 0.2], std=[0.5, 2.0]).eval()
    assert net.normalization == {"mean": [0.1, 0.2], "std": [0.5, 2.0]}
    x = torch.rand(2, 2, 8, 8)
    with torch.no_grad():
        normalized = net.stem[0](x)
    expected = (x - torch.tensor([0.1, 0.2]).view(1, 2, 1, 1)) / torch.tensor([0.5, 2.0]).view(1, 2, 1, 1)
    torch.testing.assert_close(normalized, expected)


def test_registry() -> None:
    names = list_backbones()
    assert {"resnet8", "resnet20", "resnet56", "tv_resnet18", "tv_mobilenet_v2"} <= set(names)
    assert list_backbones("resnet*") == sorted(n for n in names if n.startswith("resnet"))
    assert len(create_backbone("resnet14", input_shape=(1, 8, 8)).blocks) == 6
    with pytest.raises(UserError, match="unknown backbone 'resnet9'.*resnet8"):
        create_backbone("resnet9")


# --- torchvision backbones ---------------------------------------------------------------

TV_CASES = {
    "tv_resnet18": (["layer1", "layer2.0", "layer3"], 8, [(64, 28, 28), (128, 14, 14), (256, 7, 7)]),
    "tv_mobilenet_v2": (["stage2", "features.6", "stage5"], 17, [(24, 14, 14), (32, 7, 7), (96, 4, 4)]),
}


@pytest.fixture(scope="module", params=sorted(TV_CASES))
def tv_backbone(request):
    pytest.importorskip("torchvision", reason="torchvision (the 'vision' extra) is not installed")
    torch.manual_seed(0)
    net = create_backbone(request.param, input_shape=(1, 28, 28), num_classes=10).eval()
    return request.param, net


def test_torchvision_backbone_partitions_exactly(tv_backbone) -> None:
    name, backbone = tv_backbone
    splits, n_blocks, shapes = TV_CASES[name]
    assert len(backbone.blocks) == n_blocks
    net = MultiExitNetwork(backbone, splits).eval()
    info = backbone.feature_info()
    assert [(info[s].channels, info[s].height, info[s].width) for s in net.splits] == shapes
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        reference = backbone(x)
        outputs = net(x)
        assert reference.shape == (2, 10)
        assert torch.equal(outputs[-1], reference)
        assert torch.equal(chained(net, x), reference)
    assert [tuple(o.shape) for o in outputs] == [(2, 10)] * 4
    assert net.exit_names()[-1] == "final" and len(net.exit_names()) == 4


def test_torchvision_last_stage_cannot_be_a_split(tv_backbone) -> None:
    name, backbone = tv_backbone
    last_stage = list(backbone.stage_ends)[-1]
    assert backbone.stage_ends[last_stage] == len(backbone.blocks) - 1
    with pytest.raises(ValueError, match="before the last one"):
        MultiExitNetwork(backbone, [last_stage])


def test_mobilenet_stages_follow_channel_changes() -> None:
    pytest.importorskip("torchvision", reason="torchvision (the 'vision' extra) is not installed")
    backbone = create_backbone("tv_mobilenet_v2", input_shape=(1, 28, 28), num_classes=10)
    info = backbone.feature_info()
    for stage, end in backbone.stage_ends.items():
        if end + 1 < len(info):
            assert info[end].channels != info[end + 1].channels, stage
    channels = [info[end].channels for end in backbone.stage_ends.values()]
    assert channels == [16, 24, 32, 64, 96, 160, 320]


def test_torchvision_resnet_three_channel_large_input_keeps_stem() -> None:
    pytest.importorskip("torchvision", reason="torchvision (the 'vision' extra) is not installed")
    from engines.backbone import IMAGENET_MEAN
    from engines.torchvision_models import torchvision_resnet

    net = torchvision_resnet("resnet18", num_classes=5, input_shape=(3, 96, 96)).eval()
    assert net.normalization["mean"] == IMAGENET_MEAN
    # Stride-2 7x7 conv and max-pool kept: 96 -> 24 after the stem, 3 after layer4.
    assert [(f.height, f.width) for f in net.feature_info()][::2] == [(24, 24), (12, 12), (6, 6), (3, 3)]
    with torch.no_grad():
        assert net(torch.rand(1, 3, 96, 96)).shape == (1, 5)


# --- checkpoints -------------------------------------------------------------------------

def spec(split_points=("layer1", "layer2"), head=None) -> ModelSpec:
    return ModelSpec(
        backbone="resnet8",
        backbone_kwargs={"input_shape": (1, 8, 8)},
        classes=[str(i) for i in range(10)],
        split_points=list(split_points),
        head=head or {},
    )


def randomize(model: nn.Module, seed: int) -> None:
    """Change every weight and BN statistic so a fresh model cannot match by accident."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            tensor.add_(torch.rand(tensor.shape, generator=g) * 0.1)


@pytest.mark.parametrize("head", [{}, HeadSpec(conv_channels=4, pool="max", hidden=8).to_dict()])
def test_checkpoint_round_trip_multi_exit(tmp_path: Path, head) -> None:
    model_spec = spec(head=head)
    torch.manual_seed(3)
    model = model_spec.build().eval()
    randomize(model, 4)
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model_spec, model, meta={"epochs": 3, "note": "x"})
    loaded_spec, loaded, meta = load_checkpoint(path)
    assert isinstance(loaded, MultiExitNetwork) and not loaded.training
    assert loaded_spec.split_points == ["layer1", "layer2"] and loaded_spec.head == head
    assert meta == {"epochs": 3, "note": "x"}
    assert HeadSpec.from_dict(head) == loaded.head_spec
    x = torch.rand(5, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for want, got in zip(model(x), loaded(x)):
            assert torch.equal(want, got)
        fresh = model_spec.build().eval()
        assert not torch.equal(fresh(x)[-1], model(x)[-1])  # the weights did come from the file
    assert not list(path.parent.glob(".*.tmp"))


def test_checkpoint_round_trip_plain_backbone(tmp_path: Path) -> None:
    model_spec = spec(split_points=())
    model = model_spec.build().eval()
    randomize(model, 6)
    save_checkpoint(tmp_path / "b.pt", model_spec, model)
    _, loaded, meta = load_checkpoint(tmp_path / "b.pt")
    assert isinstance(loaded, BlockBackbone) and meta == {}
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_checkpoint_overwrite_is_atomic_replace(tmp_path: Path) -> None:
    model_spec = spec(split_points=())
    path = tmp_path / "m.pt"
    first = model_spec.build().eval()
    save_checkpoint(path, model_spec, first, meta={"v": 1})
    second = model_spec.build().eval()
    randomize(second, 7)
    save_checkpoint(path, model_spec, second, meta={"v": 2})
    _, loaded, meta = load_checkpoint(path)
    assert meta == {"v": 2}
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), second(x))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pt"]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all", b"PK\x03\x04garbage-zip"])
def test_load_garbage_checkpoint(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.pt"
    path.write_bytes(content)
    with pytest.raises(UserError, match="not a readable checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_load_foreign_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, path)
    with pytest.raises(UserError, match=f"not a checkpoint of this project \\(format {FORMAT}"):
        load_checkpoint(path)
    torch.save([1, 2, 3], path)
    with pytest.raises(UserError, match="not a checkpoint of this project"):
        load_checkpoint(path)


def test_load_missing_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.pt")


def _tamper_spec(payload: dict, case: str) -> None:
    if case == "weights_of_another_depth":
        payload["spec"]["backbone"] = "resnet20"
    elif case == "unknown_backbone":
        payload["spec"]["backbone"] = "resnet9"
    elif case == "spec_missing_field":
        del payload["spec"]["classes"]


@pytest.mark.parametrize("case", ["weights_of_another_depth", "unknown_backbone", "spec_missing_field"])
def test_inconsistent_checkpoint_is_a_user_error(tmp_path: Path, case: str) -> None:
    model_spec = spec(split_points=())
    save_checkpoint(tmp_path / "ok.pt", model_spec, model_spec.build())
    payload = torch.load(tmp_path / "ok.pt", weights_only=True)
    _tamper_spec(payload, case)
    torch.save(payload, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt"):
        load_checkpoint(tmp_path / "bad.pt")
