"""engines.partition: segments chained in order are the backbone, operation for operation."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from engines.heads import HeadSpec, exit_head
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone


def backbone(name: str, input_shape=(1, 12, 12), seed: int = 0, classes: int = 10):
    torch.manual_seed(seed)
    return create_backbone(name, input_shape=input_shape, num_classes=classes).eval()


def features_after(bb, x: torch.Tensor, index: int) -> torch.Tensor:
    """The backbone's activations after block `index`, computed by hand."""
    x = bb.stem(x)
    for block in bb.blocks[: index + 1]:
        x = block(x)
    return x


# Split points for resnet20 (blocks layer1.0..layer3.2 = 0..8) in every accepted form;
# each resolves to block indices [2, 5] except where noted.
RESNET20_SPLITS = {
    "ints": ([2, 5], [2, 5]),
    "block_names": (["layer1.2", "layer2.2"], [2, 5]),
    "stage_names": (["layer1", "layer2"], [2, 5]),
    "mixed": (["layer1.0", 4, "layer2"], [0, 4, 5]),
    "negative_int": ([-2], [7]),
    "single": (["layer2.1"], [4]),
}


@pytest.mark.parametrize("form", sorted(RESNET20_SPLITS))
def test_resnet20_segments_reproduce_backbone_exactly(form: str) -> None:
    points, expected_indices = RESNET20_SPLITS[form]
    bb = backbone("resnet20")
    net = MultiExitNetwork(bb, points).eval()
    assert net.splits == expected_indices
    x = torch.rand(5, 1, 12, 12, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = bb(x)
        outputs = net(x)
        chained = x
        for segment in net.segments:
            chained = segment(chained)[0]
    assert reference.shape == (5, 10)
    assert torch.equal(outputs[-1], reference)
    assert torch.equal(chained, reference)
    assert len(outputs) == net.num_exits == len(expected_indices) + 1


@pytest.mark.parametrize("points", [[0], [1], [0, 1], ["layer1", "layer2"], ["layer2.0"]])
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (3, 12, 12)])
def test_resnet8_segments_reproduce_backbone_exactly(points, input_shape) -> None:
    bb = backbone("resnet8", input_shape=input_shape, seed=4)
    net = MultiExitNetwork(bb, points).eval()
    x = torch.rand(3, *input_shape, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        reference = bb(x)
        chained = x
        for segment in net.segments:
            chained = segment(chained)[0]
        assert torch.equal(net(x)[-1], reference)
    assert torch.equal(chained, reference)


def test_exit_logits_are_heads_on_the_backbone_activations() -> None:
    bb = backbone("resnet20")
    net = MultiExitNetwork(bb, ["layer1.1", "layer2"]).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        logits = net(x)
        for k, index in enumerate([1, 5]):
            expected = net.exit_heads[k](features_after(bb, x, index))
            assert torch.equal(logits[k], expected)
        # The intermediate features handed on are the backbone's own activations.
        features0, _ = net.segments[0](x)
        assert torch.equal(features0, features_after(bb, x, 1))


def test_segments_share_the_backbone_modules() -> None:
    bb = backbone("resnet8")
    net = MultiExitNetwork(bb, [0]).eval()
    x = torch.rand(2, 1, 12, 12, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        before = net(x)[-1]
        bb.head[-1].bias.add_(torch.arange(10.0))  # edit the backbone, not the segments
        after = net(x)[-1]
    torch.testing.assert_close(after - before, torch.arange(10.0).expand(2, 10), rtol=0, atol=1e-5)


@pytest.mark.parametrize("bad", [[2], ["layer3"], ["layer3.0"], [-1], [99], [-9]])
def test_split_at_or_after_the_last_block_is_rejected(bad) -> None:
    with pytest.raises(ValueError, match="must be after a block before the last one"):
        MultiExitNetwork(backbone("resnet8"), bad)


def test_unknown_split_name_is_rejected_and_known_names_listed() -> None:
    with pytest.raises(ValueError, match="unknown split point 'layer9'") as info:
        MultiExitNetwork(backbone("resnet8"), ["layer9"])
    assert "layer1" in str(info.value) and "layer2.0" in str(info.value)


@pytest.mark.parametrize("bad", [[1, 0], ["layer2", "layer1"], ["layer1", 0], [0, 0], [5, 2], []])
def test_split_points_must_be_distinct_and_increasing(bad) -> None:
    name = "resnet20" if any(isinstance(p, int) and p > 1 for p in bad) else "resnet8"
    with pytest.raises(ValueError, match="distinct and increasing"):
        MultiExitNetwork(backbone(name), bad)


def test_exit_count_and_names() -> None:
    net = MultiExitNetwork(backbone("resnet20"), [1, "layer2", "layer3.1"])
    assert net.num_exits == 4
    assert net.exit_names() == ["layer1.1", "layer2.2", "layer3.1", "final"]
    assert len(net.segments) == 4 and len(net.exit_heads) == 3
    assert [s.is_final for s in net.segments] == [False, False, False, True]
    single = MultiExitNetwork(backbone("resnet8"), ["layer1"])
    assert single.num_exits == 2 and single.exit_names() == ["layer1.0", "final"]


def test_parameter_groups_split_backbone_and_heads() -> None:
    net = MultiExitNetwork(backbone("resnet8"), [0, 1])
    backbone_ids = {id(p) for p in net.backbone_parameters()}
    head_ids = {id(p) for p in net.head_parameters()}
    assert backbone_ids and head_ids and not backbone_ids & head_ids
    assert backbone_ids | head_ids == {id(p) for p in net.parameters()}


@pytest.mark.parametrize(
    "spec, layer_type, size",
    [
        (HeadSpec(), nn.AdaptiveAvgPool2d, None),
        (HeadSpec(pool="max"), nn.AdaptiveMaxPool2d, None),
        (HeadSpec(conv_channels=8), nn.Conv2d, 8),
        (HeadSpec(hidden=12), nn.Linear, 12),
        (HeadSpec(conv_channels=6, pool="max", hidden=5), nn.Conv2d, 6),
        (HeadSpec(conv_channels=8, conv_stride=2), nn.Conv2d, 8),
    ],
)
def test_head_spec_variants_give_class_logits(spec: HeadSpec, layer_type, size) -> None:
    bb = backbone("resnet20", classes=7)
    net = MultiExitNetwork(bb, ["layer1", "layer2.0"], spec).eval()
    x = torch.rand(3, 1, 12, 12, generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        logits = net(x)
    assert [tuple(t.shape) for t in logits] == [(3, 7)] * 3
    for head in net.exit_heads:
        layers = [m for m in head if isinstance(m, layer_type)]
        assert layers, f"{layer_type.__name__} missing from {head}"
        if size is not None:
            assert (layers[0].out_channels if layer_type is nn.Conv2d else layers[0].out_features) == size
    # Exit 1 sits after layer2.0 (32 channels): its first layer consumes 32 channels.
    first = next(m for m in net.exit_heads[1] if isinstance(m, (nn.Conv2d, nn.Linear)))
    assert (first.in_channels if isinstance(first, nn.Conv2d) else first.in_features) == 32


@pytest.mark.parametrize("pool, reduce", [("avg", torch.mean), ("max", torch.amax)])
def test_plain_head_pools_then_classifies(pool: str, reduce) -> None:
    bb = backbone("resnet8")
    net = MultiExitNetwork(bb, [0], HeadSpec(pool=pool)).eval()
    x = torch.rand(4, 1, 12, 12, generator=torch.Generator().manual_seed(9))
    with torch.no_grad():
        pooled = reduce(features_after(bb, x, 0), dim=(2, 3))
        linear = net.exit_heads[0][-1]
        expected = pooled @ linear.weight.T + linear.bias
        torch.testing.assert_close(net(x)[0], expected, rtol=1e-5, atol=1e-5)


def test_head_spec_round_trip_and_bad_pool() -> None:
    spec = HeadSpec(conv_channels=4, pool="max", hidden=9)
    assert HeadSpec.from_dict(spec.to_dict()) == spec
    assert "conv_stride" not in spec.to_dict()  # the default is written as before strides existed
    strided = HeadSpec(conv_channels=4, conv_stride=2)
    assert HeadSpec.from_dict(strided.to_dict()) == strided


def test_a_strided_head_conv_reads_a_quarter_of_the_positions() -> None:
    head = exit_head((16, 12, 12), 10, HeadSpec(conv_channels=8, conv_stride=2))
    conv = next(m for m in head if isinstance(m, nn.Conv2d))
    assert conv.stride == (2, 2)
    assert conv(torch.rand(1, 16, 12, 12)).shape == (1, 8, 6, 6)
    with pytest.raises(ValueError, match="pool"):
        exit_head(16, 10, HeadSpec(pool="median"))


def test_num_classes_inferred_from_backbone_head() -> None:
    net = MultiExitNetwork(backbone("resnet8", classes=4), [0]).eval()
    with torch.no_grad():
        assert [tuple(t.shape) for t in net(torch.rand(2, 1, 12, 12))] == [(2, 4), (2, 4)]
