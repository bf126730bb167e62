"""Adaptive depth: conversion, skip-aware BN, self-distillation, base-variant engines, depth switching."""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.adaptive import (
    DepthForward,
    SelfDistillation,
    base_loss,
    depth_accuracies,
    self_distillation_step,
    train_adaptive,
)
from calibration.train import TrainConfig
from edge.errors import InputError, ManifestError
from edge.manifest import SCHEMA_VERSION, load_manifest
from edge.runtime import Runtime
from engines.adaptive import AdaptiveBackbone, SkipAwareBatchNorm2d, make_adaptive
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, load_checkpoint, save_checkpoint
from engines.registry import create_backbone
from tests.helpers import INPUT_SHAPE, plain_resnet14, read_manifest_json

ROOT = Path(__file__).resolve().parents[1]


# --- conversion ------------------------------------------------------------------------------

def test_conversion_keeps_the_function_at_full_depth_and_drops_the_second_halves_at_base() -> None:
    plain = plain_resnet14()
    x = torch.rand(5, *INPUT_SHAPE)
    with torch.no_grad():
        expected_full = plain(x)
        h = plain.stem(x)
        for i in (0, 2, 4):  # resnet14: two blocks per stage, the first of each is mandatory
            h = plain.blocks[i](h)
        expected_base = plain.head(h)
    adaptive = make_adaptive(copy.deepcopy(plain)).eval()
    assert adaptive.skippable == [1, 1, 1] and adaptive.depth == "FFF"
    with torch.no_grad():
        assert torch.equal(adaptive(x), expected_full)
        adaptive.set_depth("TTT")
        # The skip BNs start as copies of the trained ones, so the base-net is the mandatory blocks.
        assert torch.allclose(adaptive(x), expected_base, atol=1e-6)
        assert not torch.allclose(adaptive(x), expected_full, atol=1e-3)


def test_every_depth_configuration_is_enumerated_super_first_base_last() -> None:
    adaptive = make_adaptive(plain_resnet14())
    configs = adaptive.depth_configs()
    assert len(configs) == 8 == len(set(configs))
    assert configs[0] == adaptive.super_depth() == "FFF" and configs[-1] == adaptive.base_depth() == "TTT"


def test_skip_aware_bn_learns_statistics_only_at_its_own_depth() -> None:
    adaptive = make_adaptive(plain_resnet14())
    switch = next(m for m in adaptive.stages[1].mandatory.modules() if isinstance(m, SkipAwareBatchNorm2d))
    before_full, before_skip = switch.full.running_mean.clone(), switch.skip.running_mean.clone()
    adaptive.train()
    adaptive.set_depth("TTT")
    adaptive(torch.rand(8, *INPUT_SHAPE))
    assert torch.equal(switch.full.running_mean, before_full)
    assert not torch.equal(switch.skip.running_mean, before_skip)
    adaptive.set_depth("FFF")
    adaptive(torch.rand(8, *INPUT_SHAPE))
    assert not torch.equal(switch.full.running_mean, before_full)


def test_skippable_blocks_in_a_stage_default_to_its_second_half_and_cannot_change_shape() -> None:
    plain = create_backbone("resnet20", input_shape=INPUT_SHAPE, num_classes=10)
    assert make_adaptive(plain).skippable == [1, 1, 1]
    assert make_adaptive(create_backbone("resnet20", input_shape=INPUT_SHAPE, num_classes=10), [2, 2, 0]).skippable == [2, 2, 0]
    with pytest.raises(ValueError, match="can skip 0 to 2, not 3"):
        make_adaptive(create_backbone("resnet20", input_shape=INPUT_SHAPE, num_classes=10), [3, 1, 1])
    with pytest.raises(ValueError, match="one skippable count per stage"):
        make_adaptive(create_backbone("resnet20", input_shape=INPUT_SHAPE, num_classes=10), [1, 1])


@pytest.mark.parametrize("depth, message", [("FF", "3 letters"), ("FXF", "3 letters"), ("TTT", "no skippable sub-path")])
def test_a_bad_depth_configuration_is_refused(depth: str, message: str) -> None:
    adaptive = make_adaptive(create_backbone("resnet20", input_shape=INPUT_SHAPE, num_classes=10), [1, 1, 0])
    with pytest.raises(ValueError, match=message):
        adaptive.set_depth(depth)


@pytest.mark.parametrize("arch, skippable", [("tv_resnet18", [1, 1, 1, 1]), ("tv_mobilenet_v2", [0, 1, 1, 2, 1, 1, 0])])
def test_torchvision_networks_convert_single_block_stages_stay_fixed(arch: str, skippable: list[int]) -> None:
    pytest.importorskip("torchvision", reason="torchvision (the 'vision' extra) is not installed")
    plain = create_backbone(arch, input_shape=(1, 28, 28), num_classes=10).eval()
    adaptive = make_adaptive(copy.deepcopy(plain)).eval()
    assert adaptive.skippable == skippable
    assert len(adaptive.depth_configs()) == 2 ** sum(1 for n in skippable if n)
    x = torch.rand(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(adaptive(x), plain(x))
        adaptive.set_depth(adaptive.base_depth())
        assert adaptive(x).shape == (2, 10)


def test_an_adaptive_checkpoint_rebuilds_the_same_network(tmp_path: Path) -> None:
    adaptive = make_adaptive(plain_resnet14())
    spec = ModelSpec("resnet14", {"input_shape": list(INPUT_SHAPE)}, [str(i) for i in range(10)], skippable=[1, 1, 1])
    save_checkpoint(tmp_path / "a.pt", spec, adaptive)
    loaded_spec, loaded, _ = load_checkpoint(tmp_path / "a.pt")
    assert isinstance(loaded, AdaptiveBackbone) and loaded_spec.skippable == [1, 1, 1]
    x = torch.rand(3, *INPUT_SHAPE)
    for depth in ("FFF", "TFT"):
        adaptive.eval().set_depth(depth)
        loaded.set_depth(depth)
        with torch.no_grad():
            assert torch.equal(adaptive(x), loaded(x))


# --- skip-aware self-distillation --------------------------------------------------------------

def test_the_footnote_step_gives_the_same_gradients_as_algorithm_1() -> None:
    """DDP's sequential step (two backwards) and the paper's joint step agree, which is
    what lets a user train under torchrun without changing the objective."""
    reference = make_adaptive(plain_resnet14()).train()
    x, y = torch.rand(16, *INPUT_SHAPE), torch.randint(0, 10, (16,))
    grads = {}
    for mode in ("joint", "sequential"):
        backbone = copy.deepcopy(reference)
        loss = self_distillation_step(DepthForward(backbone), backbone, SelfDistillation(), mode)(x, y)
        grads[mode] = (loss, {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None})
    (loss_joint, joint), (loss_seq, seq) = grads["joint"], grads["sequential"]
    assert loss_joint == pytest.approx(loss_seq, rel=1e-6)
    assert joint.keys() == seq.keys()
    assert any("skip" in n for n in joint) and any("skippable" in n for n in joint)  # both passes reach their parameters
    for name in joint:
        torch.testing.assert_close(joint[name], seq[name], rtol=1e-5, atol=1e-6)


def test_self_distillation_pulls_the_base_net_towards_the_super_net(digits_train, digits_test) -> None:
    """Against the same training without the distillation term (alpha = 1: the super-net's
    cross-entropy alone), the base-net ends closer to the super-net and more accurate."""
    x = torch.from_numpy(digits_test.images[:300])
    cfg = TrainConfig(epochs=4, batch_size=64, lr=0.05, progress=False)
    results = {}
    for alpha in (1.0, 0.5):
        backbone = make_adaptive(plain_resnet14())
        losses = train_adaptive(backbone, digits_train, cfg, SelfDistillation(alpha))
        assert losses[-1] < losses[0]
        with torch.no_grad():
            distance = float(base_loss(DepthForward(backbone)(x, "FFF"), DepthForward(backbone)(x, "TTT")))
        accuracies = depth_accuracies(backbone, digits_test)
        assert set(accuracies) == set(backbone.depth_configs()) and backbone.depth == "TTT"  # restored
        results[alpha] = distance, accuracies
    (undistilled, plain_acc), (distilled, acc) = results[1.0], results[0.5]
    assert distilled < 0.5 * undistilled
    assert acc["TTT"] > plain_acc["TTT"] + 0.05 and acc["FFF"] > 0.8


def test_two_process_torchrun_training_keeps_both_ranks_in_step(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        "-m", "tools.train_adaptive", "--arch", "resnet14", "--data", "digits", "--out", str(tmp_path),
        "--epochs", "1", "--exit-epochs", "0", "--batch-size", "32",
    ]
    done = run_killing_the_group(command, env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    prints = dict(re.findall(r"rank (\d)/2: weights ([0-9a-f]{16})", done.stdout))
    assert sorted(prints) == ["0", "1"], done.stdout + done.stderr[-2000:]
    # Each rank trained on its own half of the batches: only the gradient exchange keeps them identical.
    assert prints["0"] == prints["1"]
    _, model, meta = load_checkpoint(tmp_path / "adaptive.pt")
    assert isinstance(model, AdaptiveBackbone) and meta["epochs_done"] == 1


def run_killing_the_group(command: list[str], env: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    """subprocess.run, but a hang also kills torchrun's workers, not just torchrun."""
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


# --- engines and runtime -------------------------------------------------------------------------


def test_every_stage_gets_a_base_engine_named_and_hashed_in_the_manifest(adaptive_built: Path) -> None:
    manifest = load_manifest(adaptive_built)
    assert manifest.adaptive and manifest.schema_version == SCHEMA_VERSION
    assert [s.base["file"] for s in manifest.segments] == [f"segment_{k}.base.onnx" for k in range(3)]  # type: ignore[index]
    assert [p.depth for p in manifest.operating_points] == [None, "TTT", "TFT"]
    # the base engines are smaller graphs: the skippable block is not in them
    for segment in manifest.segments:
        assert (adaptive_built / segment.base["file"]).stat().st_size < (adaptive_built / segment.file).stat().st_size  # type: ignore[index]


def test_engines_are_built_at_their_own_depth_whatever_depth_the_network_was_left_at(adaptive_net, digits_test, real_images, tmp_path: Path) -> None:
    net = copy.deepcopy(adaptive_net)
    net.backbone.set_depth("TTT")
    build_engines(net, tmp_path, digits_test.classes, digits_test.images[:16], options=BuildOptions(name="left-at-base"))
    assert net.backbone.depth == "TTT"  # restored
    runtime = Runtime(tmp_path)
    for depth in ("FFF", "TTT"):
        net.backbone.set_depth(depth)
        with torch.no_grad():
            expected = torch.softmax(net(torch.from_numpy(real_images))[-1], dim=1).numpy()
        np.testing.assert_allclose(runtime.infer(real_images, depth=depth).probabilities, expected, atol=1e-4)
    runtime.close()


def test_a_base_engine_with_the_wrong_interface_is_refused_at_load(adaptive_built: Path, tmp_path: Path) -> None:
    from edge.atomic import sha256_file
    from tests.helpers import write_manifest_json

    copy_dir = Path(shutil.copytree(adaptive_built, tmp_path / "engines"))
    shutil.copy(copy_dir / "segment_0.onnx", copy_dir / "segment_1.base.onnx")  # takes the image, not features
    data = read_manifest_json(copy_dir)
    data["segments"][1]["base"]["sha256"] = sha256_file(copy_dir / "segment_1.base.onnx")
    write_manifest_json(copy_dir, data)
    with pytest.raises(ManifestError, match=r"segment_1\.base\.onnx: the engine takes \['input'\]"):
        Runtime(copy_dir)


def test_a_version_2_manifest_cannot_carry_base_variants(adaptive_built: Path, tmp_path: Path) -> None:
    from tests.helpers import write_manifest_json

    copy_dir = Path(shutil.copytree(adaptive_built, tmp_path / "engines"))
    data = read_manifest_json(copy_dir)
    data["schema_version"] = 2
    write_manifest_json(copy_dir, data)
    with pytest.raises(ManifestError, match="base variants need schema version 3"):
        load_manifest(copy_dir)


def test_a_tampered_base_engine_is_named(adaptive_built: Path, tmp_path: Path) -> None:
    copy_dir = Path(shutil.copytree(adaptive_built, tmp_path / "engines"))
    with open(copy_dir / "segment_1.base.onnx", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ManifestError, match="segment_1.base.onnx"):
        load_manifest(copy_dir)


@pytest.mark.parametrize("depth", ["FFF", "TTT", "FTF", "TFT"])
def test_runtime_at_each_depth_matches_torch_at_that_depth(adaptive_built: Path, adaptive_net, real_images, depth: str) -> None:
    runtime = Runtime(adaptive_built)
    net = copy.deepcopy(adaptive_net)
    net.backbone.set_depth(depth)
    with torch.no_grad():
        expected = torch.softmax(net(torch.from_numpy(real_images))[-1], dim=1).numpy()
    batch = runtime.infer(real_images, depth=depth)
    one = runtime.infer(real_images[:1], depth=depth)
    np.testing.assert_allclose(batch.probabilities, expected, atol=1e-4)
    np.testing.assert_allclose(one.probabilities[0], expected[0], atol=1e-4)
    assert batch.operating_point == ("full" if depth == "FFF" else "custom")
    runtime.close()


def test_early_exits_work_with_either_variant(adaptive_built: Path, adaptive_net, real_images) -> None:
    net = copy.deepcopy(adaptive_net)
    net.backbone.set_depth("TFT")
    with torch.no_grad():
        logits = net(torch.from_numpy(real_images))
    first = torch.distributions.Categorical(logits=logits[0]).entropy()
    threshold = float(first.median())  # about half the batch leaves at the first exit
    runtime = Runtime(adaptive_built, operating_point="mixed-eager")
    result = runtime.infer(real_images, thresholds=[threshold, threshold])
    assert runtime.depth == "TFT" and 0 < (result.exits == 0).sum() < len(real_images)
    for row, k in enumerate(result.exits):
        np.testing.assert_allclose(result.probabilities[row], torch.softmax(logits[k][row], 0).numpy(), atol=1e-4)
    runtime.close()


def test_switching_depth_reloads_no_engine(adaptive_built: Path, real_images, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime as ort

    runtime = Runtime(adaptive_built)
    opened: list[object] = []
    real_session = ort.InferenceSession
    monkeypatch.setattr(ort, "InferenceSession", lambda *a, **k: opened.append(a) or real_session(*a, **k))
    outputs = {}
    for point in ("full", "base", "full", "base"):
        runtime.set_operating_point(point)
        outputs[point] = runtime.infer(real_images).probabilities
    assert opened == []
    assert runtime.depth == "TTT" and not np.allclose(outputs["full"], outputs["base"], atol=1e-3)
    runtime.close()


def test_depth_errors_are_specific(adaptive_built: Path, built_dir: Path, real_images) -> None:
    runtime = Runtime(adaptive_built)
    with pytest.raises(InputError, match="3 letters"):
        runtime.infer(real_images, depth="TT")
    plain = Runtime(built_dir)
    with pytest.raises(InputError, match="no base variant"):
        plain.infer(real_images, depth="TFF")
    with pytest.raises(InputError, match="depth 'TFF' skips stages and base variants are fp32 only"):
        runtime.infer(real_images, depth="TFF", precision="int8")
    runtime.close()
    plain.close()


def test_a_manifest_point_with_an_impossible_depth_is_refused(adaptive_built: Path, built_copy: Path, tmp_path: Path) -> None:
    from tests.helpers import write_manifest_json

    data = read_manifest_json(built_copy)
    data["operating_points"][0]["depth"] = "TFF"
    write_manifest_json(built_copy, data)
    with pytest.raises(ManifestError, match="cannot skip"):
        load_manifest(built_copy)
    copy_dir = Path(shutil.copytree(adaptive_built, tmp_path / "adn"))
    data = read_manifest_json(copy_dir)
    data["operating_points"][1]["depth"] = "TTTT"
    write_manifest_json(copy_dir, data)
    with pytest.raises(ManifestError, match="'base'.*3 letters"):
        load_manifest(copy_dir)


# --- depth and exits on one frontier -----------------------------------------------------------

def test_every_depth_gets_its_costs_its_exits_off_and_its_thresholds(adaptive_built: Path, adaptive_net, digits_test, tmp_path: Path) -> None:
    from calibration.depth_exits import depth_costs, frontier, plan_depths
    from calibration.evaluate import StaticModel, measure_interleaved, runtime_config
    from calibration.pipeline import with_points
    from calibration.thresholds import Target

    shutil.copytree(adaptive_built, tmp_path / "engines")  # its points are rewritten below
    runtime = Runtime(tmp_path / "engines")
    manifest = runtime.manifest
    static = StaticModel(manifest.path_of(manifest.static_model["file"]))  # type: ignore[index]
    depths = adaptive_net.backbone.depth_configs()
    models, static_ms = depth_costs(runtime, depths, static.config(), digits_test.subset(slice(0, 30)), block=10)
    assert list(models) == depths and static_ms > 0
    assert models["FFF"].whole_ms is not None and models["TTT"].whole_ms is None  # the whole engine runs only at full depth
    assert all(len(m.segment_ms) == 3 and len(m.trunk_ms) == 2 for m in models.values())
    torch_accuracy = depth_accuracies(adaptive_net.backbone, digits_test)
    target = Target(max_drop=0.03, reference_accuracy=torch_accuracy["FFF"])  # the static model's, in the bench
    adaptive_net.backbone.set_depth("TFT")
    points = plan_depths(adaptive_net, models, static_ms, digits_test, target, "entropy")
    assert adaptive_net.backbone.depth == "TFT"  # left as it was
    adaptive_net.backbone.set_depth("FFF")
    off = {p.depth: p for p in points if p.name.endswith("-off")}
    assert list(off) == depths
    for depth, point in off.items():
        assert point.thresholds == [None, None] and point.calibration_accuracy == pytest.approx(torch_accuracy[depth], abs=1e-9)
    exits = [p for p in points if p.name.endswith("-exits")]
    assert exits, "no depth took an exit on digits"
    for p in exits:
        assert any(t is not None for t in p.thresholds)
        assert p.calibration_accuracy >= torch_accuracy["FFF"] - 0.03 - 1e-9
    served = Runtime(with_points(manifest, [p.operating_point("entropy") for p in points]))
    measured = measure_interleaved({p.name: runtime_config(served, point_name=p.name) for p in points}, digits_test.subset(slice(0, 40)), progress=False, block=10)
    assert all(measured[p.name].exit_fractions[-1] == 1.0 for p in off.values())
    assert any(measured[p.name].exit_fractions[-1] < 1.0 for p in exits)
    front = frontier(measured)
    assert front and all(measured[a].mean_ms <= measured[b].mean_ms and measured[a].accuracy < measured[b].accuracy for a, b in zip(front, front[1:]))
    runtime.close()
    served.close()


# --- the report tool --------------------------------------------------------------------------

def test_adaptive_report_end_to_end_on_digits(adaptive_net, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import adaptive_report
    from tools._cli import run_main

    spec = ModelSpec("resnet14", {"input_shape": list(INPUT_SHAPE)}, [str(i) for i in range(10)], ["layer1", "layer2"], skippable=[1, 1, 1])
    save_checkpoint(tmp_path / "adn.pt", spec, adaptive_net)
    save_checkpoint(tmp_path / "static.pt", ModelSpec("resnet14", {"input_shape": list(INPUT_SHAPE)}, spec.classes), plain_resnet14())
    out = tmp_path / "report"
    args = ["--checkpoint", str(tmp_path / "adn.pt"), "--static", str(tmp_path / "static.pt"), "--data", "digits",
            "--out", str(out), "--test-samples", "60", "--sweep-samples", "40", "--thresholds", "0.3,1.5"]
    assert run_main(adaptive_report.main, args) == 0
    report = json.loads((out / "adaptive.json").read_text())
    assert list(report["depths"]) == ["static", *make_adaptive(plain_resnet14()).depth_configs()]
    assert len(report["sweep"]) == 8 * 3 and all(p["samples"] == 40 for p in report["sweep"])
    front = report["pareto"]
    assert [p["mean_ms"] for p in front] == sorted(p["mean_ms"] for p in front)
    assert [p["accuracy"] for p in front] == sorted(p["accuracy"] for p in front)
    assert (out / "depths.png").stat().st_size > 0 and (out / "pareto.png").stat().st_size > 0
    runtime = Runtime(out / "engines")  # the frontier is now the manifest's operating points
    names = [p.name for p in runtime.manifest.operating_points]
    assert names[:2] == ["full", "base"] and runtime.manifest.point("base").depth == "TTT"
    assert {f"depth-{d}" for d in report["depths"] if d not in ("static", "FFF", "TTT")} <= set(names)
    for name in names:
        runtime.set_operating_point(name)
        assert runtime.infer(np.zeros((1, *INPUT_SHAPE), dtype=np.float32)).operating_point == name
    runtime.close()
    assert "Pareto frontier" in capsys.readouterr().out


def test_adaptive_report_refuses_a_network_without_adaptive_depth(tmp_path: Path, net, capsys: pytest.CaptureFixture[str]) -> None:
    from tools import adaptive_report
    from tools._cli import run_main

    spec = ModelSpec("resnet8", {"input_shape": list(INPUT_SHAPE)}, [str(i) for i in range(10)], ["layer1", "layer2"])
    save_checkpoint(tmp_path / "plain.pt", spec, net)
    assert run_main(adaptive_report.main, ["--checkpoint", str(tmp_path / "plain.pt"), "--data", "digits", "--out", str(tmp_path)]) == 1
    assert "not an adaptive-depth network" in capsys.readouterr().err
