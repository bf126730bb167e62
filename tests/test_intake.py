"""Bring your own network: sources, weights, tracing into clean cuts, chain checks, and
the one-line errors for what cannot come in. A representative subset of architectures
runs here; `edge-intake-bench` runs the whole list into docs/results/intake.json."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edge.errors import MissingDependencyError, UserError
from engines.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from engines.intake.check import TOLERANCE, check_chain
from engines.intake.cuts import cut_points, measure_cut_points, propose_splits
from engines.intake.sources import build_backbone, traced_network
from engines.partition import MultiExitNetwork
from tools import intake
from tools._cli import run_main

pytest.importorskip("torchvision", reason="the 'vision' extra is not installed")
SHAPE = (3, 32, 32)
USER = "module:tests.user_nets:TinyResNet"
VIT = "module:torchvision.models:VisionTransformer"  # a small torchvision ViT, through the module source
SMALL_VIT = {"image_size": 32, "patch_size": 16, "num_layers": 2, "num_heads": 2, "hidden_dim": 32, "mlp_dim": 64}


@pytest.mark.parametrize("source, kwargs, splits", [
    ("torchvision:resnet18", {}, ["layer1", "layer2.1", "layer3"]),
    ("torchvision:mobilenet_v3_small", {}, ["features.3", "features.6", "features.9"]),
    (VIT, {**SMALL_VIT, "num_layers": 4}, ["encoder.layers.encoder_layer_0", "encoder.layers.encoder_layer_2"]),
    (USER, {}, ["stage1", "stage2.0"]),
])
def test_chained_segments_are_the_network_in_torch_and_onnxruntime(source: str, kwargs: dict, splits: list[str], tmp_path: Path) -> None:
    torch.manual_seed(0)
    network, backbone = traced_network(source, 10, SHAPE, kwargs)
    images = np.random.default_rng(0).random((3, *SHAPE), dtype=np.float32)
    check = check_chain(network, backbone, splits, tmp_path, images)
    assert len(check.graphs) == len(splits) + 1 and all(g.path.is_file() for g in check.graphs)
    assert check.ok, (check.torch_diff, check.onnx_diff, check.segment_diffs)
    assert max(check.segment_diffs) <= TOLERANCE


def test_timm_models_come_in_too(tmp_path: Path) -> None:
    pytest.importorskip("timm", reason="the 'timm' extra is not installed")
    for source, kwargs in (("timm:resnet10t", {}), ("timm:deit_tiny_patch16_224", {"img_size": 32, "depth": 2})):
        network, backbone = traced_network(source, 10, SHAPE, kwargs)
        splits = [cut_points(backbone)[len(backbone.blocks) // 2].name]
        assert check_chain(network, backbone, splits, tmp_path, np.random.rand(2, *SHAPE).astype(np.float32)).ok


def test_exit_heads_fit_feature_maps_and_token_sequences() -> None:
    backbone = build_backbone(VIT, 10, SHAPE, SMALL_VIT)
    net = MultiExitNetwork(backbone, ["encoder.layers.encoder_layer_0"])
    logits = net(torch.rand(2, *SHAPE))
    assert [tuple(x.shape) for x in logits] == [(2, 10), (2, 10)]
    assert isinstance(net.exit_heads[0][1], torch.nn.LayerNorm)  # (T, D) tokens: class token, LayerNorm, linear


def test_cut_points_are_named_by_module_with_aliases_and_measured() -> None:
    backbone = build_backbone(USER, 10, SHAPE)
    points = cut_points(backbone)
    names = [p.name for p in points]
    assert names[:5] == ["stem.0", "stem.1", "stem.2", "stage1.0", "stage1.1"]
    assert "stage1" in points[names.index("stage1.1")].aliases  # the stage ends with its last block
    measured = measure_cut_points(backbone, rounds=5, progress=False)
    shares = [p.prefix_share for p in measured]
    assert all(0 < s < 1 for s in shares) and shares == sorted(shares)
    proposed = propose_splits(measured, 2)
    assert len(proposed) == 2 and names.index(proposed[0]) < names.index(proposed[1])


def test_a_traced_checkpoint_rebuilds_its_network(tmp_path: Path) -> None:
    spec = ModelSpec(USER, {"input_shape": list(SHAPE), "width": 4}, [str(i) for i in range(10)], ["stage1"])
    net = spec.build()
    save_checkpoint(tmp_path / "net.pt", spec, net)
    loaded_spec, loaded, _ = load_checkpoint(tmp_path / "net.pt")
    x = torch.rand(2, *SHAPE)
    with torch.no_grad():
        for a, b in zip(net.eval()(x), loaded(x)):
            torch.testing.assert_close(a, b)
    assert loaded_spec == spec


def test_weights_load_strictly_from_a_state_dict_or_a_checkpoint_dict(tmp_path: Path) -> None:
    network, _ = traced_network(USER, 10, SHAPE)
    torch.save({"model_state_dict": network.state_dict(), "epoch": 3}, tmp_path / "ckpt.pth")
    torch.save({f"module.{k}": v for k, v in network.state_dict().items()}, tmp_path / "ddp.pth")
    x = torch.rand(2, *SHAPE)
    expected = build_backbone(USER, 10, SHAPE, weights=tmp_path / "ckpt.pth")(x)
    torch.testing.assert_close(build_backbone(USER, 10, SHAPE, weights=tmp_path / "ddp.pth")(x), expected)


def test_the_intake_benchmark_writes_its_entry_and_plot_and_resumes(tmp_path: Path) -> None:
    import json

    from tools import intake_bench

    out = tmp_path / "intake.json"
    assert run_main(intake_bench.main, ["--out", str(out), "--only", "TinyResNet", "--images", "10"]) == 0
    [entry] = json.loads(out.read_text())
    assert entry["source"] == USER and entry["input_shape"] == [3, 64, 64] and entry["num_segments"] == 4
    assert entry["equal"] and entry["max_abs_diff_onnx"] <= TOLERANCE and entry["static_ms"] > 0 and entry["chain_full_depth_ms"] > 0
    assert (tmp_path / "intake.png").stat().st_size > 0
    assert run_main(intake_bench.main, ["--out", str(out), "--only", "TinyResNet", "--resume"]) == 0
    assert json.loads(out.read_text()) == [entry]  # kept, not measured again


# --- what cannot come in: one line each ------------------------------------------------------

def _fails(args: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert run_main(intake.main, [*args, "--rounds", "2"]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_an_untraceable_model_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["--source", "module:tests.user_nets:DataDependent", "--input-shape", "3,32,32"], capsys)
    assert "torch.fx cannot trace it" in err and "control flow" in err


def test_a_split_inside_a_residual_block_names_the_tensors_that_cross(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["--source", USER, "--input-shape", "3,32,32", "--splits", "stage1.0.conv1"], capsys)
    assert "'stage1.0.conv1' is not a clean cut: 2 tensors cross it" in err
    assert "stem_2 in stem.2" in err  # the block's identity path


def test_weights_that_do_not_match_list_missing_and_unexpected_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    network, _ = traced_network(USER, 10, SHAPE)
    state = network.state_dict()
    state["extra.weight"] = state.pop("fc.weight")
    torch.save({"state_dict": state}, tmp_path / "bad.pt")
    err = _fails(["--source", USER, "--input-shape", "3,32,32", "--num-classes", "10", "--weights", str(tmp_path / "bad.pt")], capsys)
    assert "weights do not match the network: missing (1): fc.weight; unexpected (1): extra.weight" in err


def test_a_wrong_input_shape_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    err = _fails(["--source", USER, "--input-shape", "1,32,32"], capsys)
    assert "does not take inputs of shape (1, 32, 32)" in err


def test_an_unknown_source_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert "unknown source 'keras:resnet'" in _fails(["--source", "keras:resnet", "--input-shape", "3,32,32"], capsys)
    assert "torchvision has no classification model 'resnet19' (did you mean" in _fails(
        ["--source", "torchvision:resnet19", "--input-shape", "3,32,32"], capsys)


def test_a_missing_optional_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'edge-dynamic\[timm\]'"):
        build_backbone("timm:resnet18", 10, SHAPE)


def test_a_network_that_is_not_a_classifier_is_refused() -> None:
    with pytest.raises(UserError, match="not a classifier"):
        build_backbone("module:torch.nn:Identity", 10, SHAPE)  # hands back the image
