"""Per-input depth and width: gates trained over the tree of stage variants, written into
both variants of each segment, and a runtime that routes every input to the variant its
gate chose. The routing tests run on an adaptive-depth network (base = skippable half
left out) and an adaptive-width one (base = blocks at half their inner channels)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from calibration import depth_gates as dg
from calibration.data import Dataset
from calibration.dynamic_depth import against_fixed
from edge.errors import InputError, ManifestError
from edge.governor import Governor, Policy, PolicyError, ladder
from edge.manifest import OperatingPoint, load_manifest
from edge.runtime import Runtime
from edge.sensors.replay import ReplaySource
from engines.build import BuildOptions, build_engines
from engines.checkpoint import ModelSpec, save_checkpoint
from engines.partition import MultiExitNetwork
from tests.helpers import INPUT_SHAPE
from tools import dynamic as dynamic_tool
from tools._cli import run_main


@pytest.fixture(scope="module", params=["depth", "width"])
def variant_net(request: pytest.FixtureRequest) -> MultiExitNetwork:
    net: MultiExitNetwork = request.getfixturevalue("adaptive_net" if request.param == "depth" else "slim_net")
    return net


@pytest.fixture(scope="module")
def tree(variant_net: MultiExitNetwork, digits_test: Dataset) -> dg.DepthTree:
    return dg.depth_tree(variant_net, digits_test)


@pytest.fixture(scope="module")
def costs(tree: dg.DepthTree) -> dict[str, float]:
    return dg.relative_costs(tree, {c: 1.0 - 0.2 * c.count("T") for c in tree.configs})  # each skipped half saves a fifth


def test_the_tree_holds_every_path_with_the_torch_network_outputs(variant_net: MultiExitNetwork, digits_test: Dataset, tree: dg.DepthTree) -> None:
    assert tree.gated == [1, 2] and tree.configs == ["FFF", "FFT", "FTF", "FTT"]
    assert sorted(tree.pooled) == ["F", "FF", "FT"]
    backbone = variant_net.backbone
    images = torch.from_numpy(digits_test.images[:20])
    for config in ("FTF", "FFT"):
        backbone.set_depth(config)  # type: ignore[operator]
        with torch.no_grad():
            expected = variant_net(images)[-1].numpy()
        np.testing.assert_allclose(tree.logits[config][:20], expected, atol=1e-5)
    dg.depth_tree(variant_net, digits_test.subset(slice(0, 20)))
    assert backbone.depth == "FFT"  # type: ignore[attr-defined]  # the depth it was left at, restored
    backbone.set_depth("FFF")  # type: ignore[operator]


def test_the_cost_weight_trades_accuracy_for_skipped_halves(tree: dg.DepthTree, costs: dict[str, float]) -> None:
    accurate = dg.routed_outcome(dg.routed_configs(dg.train_depth_gates(tree, costs, 0.0), tree), tree, costs)
    cheap = dg.routed_outcome(dg.routed_configs(dg.train_depth_gates(tree, costs, 1.0), tree), tree, costs)
    assert accurate.relative_cost > cheap.relative_cost and accurate.accuracy > cheap.accuracy
    assert cheap.shares == {"FTT": 1.0}  # pure cost: every input skips every half it can


def test_the_budget_bisection_returns_gates_within_the_budget(tree: dg.DepthTree, costs: dict[str, float]) -> None:
    result = dg.depth_gates_for_budget(tree, costs, 0.85, steps=5)
    assert result.feasible and result.outcome.relative_cost <= 0.85
    assert 0.0 < result.alpha < 1.0 and len(result.outcome.shares) > 1  # a per-input mixture, not one fixed depth
    impossible = dg.depth_gates_for_budget(tree, costs, 0.5, steps=5)  # cheaper than the base-net
    assert not impossible.feasible


@pytest.fixture(scope="module")
def routed_built(variant_net: MultiExitNetwork, digits_test: Dataset, tree: dg.DepthTree, costs: dict[str, float],
                 tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[int, dg.DepthGate]]:
    gates = dg.train_depth_gates(tree, costs, 0.3)
    out = tmp_path_factory.mktemp("routed")
    points = [OperatingPoint("routed", [None, None], depth="FGG", route_threshold=0.5), OperatingPoint("full", [None, None])]
    build_engines(variant_net, out, digits_test.classes, digits_test.images[:16], points=points,
                  options=BuildOptions(name="digits-routed", max_batch=64, include_static=False),
                  routers=dg.routers(gates, variant_net.num_exits))
    return out, gates


def linked_copy(folder: Path, target: Path, edit: Callable[[dict[str, Any]], None]) -> Path:
    """The engines linked into `target` under an edited manifest."""
    target.mkdir()
    for engine in folder.glob("*.onnx"):
        (target / engine.name).symlink_to(engine)
    data = json.loads((folder / "manifest.json").read_text())
    edit(data)
    (target / "manifest.json").write_text(json.dumps(data))
    return target


def median_skip_next(runtime: Runtime, images: np.ndarray) -> float:
    """A routing threshold that sends about half of `images` each way after the first stage."""
    return float(np.median(runtime.backend.run_routed(0, images, None).skip_next))


@pytest.mark.parametrize("early_exit", [False, True])
def test_a_mixed_batch_gives_each_input_what_its_depth_run_alone_gives(
    routed_built: tuple[Path, dict[int, dg.DepthGate]], real_images: np.ndarray, tmp_path: Path, early_exit: bool,
) -> None:
    folder, _ = routed_built
    images = real_images[:40]
    threshold = median_skip_next(Runtime(folder), images)
    runtime = Runtime(linked_copy(folder, tmp_path / "median", lambda m: m["operating_points"][0].update(route_threshold=threshold)), operating_point="routed")
    entropy = runtime.backend.run(0, images).scores
    thresholds = [float(np.median(entropy)) if early_exit else None, None]
    result = runtime.infer(images, thresholds)
    assert result.depths is not None and len({d.ljust(2, "-")[:2] for d in result.depths}) > 1, "the batch should mix depths"
    assert (result.exits == 0).any() == early_exit
    for i, path in enumerate(result.depths):
        alone = runtime.infer(images[i : i + 1], thresholds, depth=path.ljust(3, "F"))
        assert alone.exits[0] == result.exits[i]
        np.testing.assert_allclose(alone.probabilities[0], result.probabilities[i], atol=1e-6)
    one_by_one = [runtime.infer(images[i : i + 1], thresholds) for i in range(len(images))]
    assert [r.depths[0] for r in one_by_one if r.depths] == result.depths
    np.testing.assert_allclose(np.concatenate([r.probabilities for r in one_by_one]), result.probabilities, atol=1e-6)


def test_the_engines_route_as_the_torch_gates_do(routed_built: tuple[Path, dict[int, dg.DepthGate]], tree: dg.DepthTree, digits_test: Dataset) -> None:
    folder, gates = routed_built
    runtime = Runtime(folder, operating_point="routed")
    got = runtime.infer(np.ascontiguousarray(digits_test.images[:64])).depths
    expected = dg.routed_configs(gates, tree)[:64]
    assert got is not None and np.mean(np.array(got) == expected) >= 0.98  # a gate output right at 0.5 may round either way


def test_the_manifest_refuses_gate_letters_it_cannot_serve(
    routed_built: tuple[Path, dict[int, dg.DepthGate]], adaptive_built: Path, real_images: np.ndarray, tmp_path: Path,
) -> None:
    folder, _ = routed_built
    manifest = load_manifest(folder)
    assert [s.route_output for s in manifest.segments] == ["skip_next", "skip_next", None]
    assert manifest.check_depth("TGG") == "TGG"
    with pytest.raises(ManifestError, match="no depth gate decides for segment_0"):
        manifest.check_depth("GFF")  # nothing before the first stage to decide
    with pytest.raises(ManifestError, match=r"letters of F \(full\), T \(skip\) and G \(a gate decides\), got 'FGX'"):
        manifest.check_depth("FGX")
    plain = Runtime(adaptive_built)
    with pytest.raises(InputError, match=r"depth must be 3 letters of F \(full\) and T \(skip\), got 'FGG'"):
        plain.infer(real_images[:2], depth="FGG")
    with pytest.raises(ManifestError, match="no depth gate decides for segment_1"):
        load_manifest(linked_copy(folder, tmp_path / "ungated", lambda m: m["segments"][0].update(route_output=None)))
    with pytest.raises(ManifestError, match="depth gates need schema version 5"):
        load_manifest(linked_copy(folder, tmp_path / "old", lambda m: m.update(schema_version=4)))


def test_routing_refuses_a_network_it_cannot_route(net: MultiExitNetwork, digits_test: Dataset) -> None:
    with pytest.raises(dg.AdaptiveDepthError, match="needs an adaptive-depth network"):
        dg.depth_tree(net, digits_test)


def test_the_dynamic_report_compares_every_per_input_point_with_the_fixed_depths(variant_net: MultiExitNetwork, tmp_path: Path) -> None:
    kind = variant_net.backbone.variant_kind  # type: ignore[union-attr]
    variants: dict[str, Any] = {"skippable": [1, 1, 1]} if kind == "depth" else {"width": 0.5}
    spec = ModelSpec("resnet14", {"input_shape": list(INPUT_SHAPE)}, [str(i) for i in range(10)], ["layer1", "layer2"], **variants)
    save_checkpoint(tmp_path / "adn.pt", spec, variant_net)
    out, results = tmp_path / "dynamic", tmp_path / "results" / "dynamic.json"
    other = "width" if kind == "depth" else "depth"
    results.parent.mkdir()
    kept = {"points": {}, "dataset": "digits", "test_samples": 0}
    results.write_text(json.dumps({other: kept}))  # the other kind's run, kept
    assert run_main(dynamic_tool.main, ["--checkpoint", str(tmp_path / "adn.pt"), "--data", "digits", "--out", str(out), "--results", str(results),
                                        "--calibration", "0:400", "--test-samples", "150", "--route-thresholds", "0.3,0.7", "--same-accuracy", "0.5"]) == 0
    assert run_main(dynamic_tool.main, ["--checkpoint", str(tmp_path / "adn.pt"), "--data", "digits", "--out", str(out), "--calibration", "5000:6000"]) == 1
    with pytest.raises(SystemExit):
        dynamic_tool.parse_args(["--checkpoint", "x.pt", "--out", "o", "--calibration", "40000"])
    report = json.loads((out / f"dynamic-{kind}.json").read_text())
    assert report["same_accuracy"] == pytest.approx(0.005) and report["variants"] == kind
    assert (out / f"dynamic-{kind}.png").stat().st_size > 10_000
    assert list(json.loads(results.read_text()).items()) == sorted({kind: report, other: kept}.items())  # depth first, then width
    fixed = [n for n, r in report["points"].items() if r["shares"] is None]
    routed = [n for n, r in report["points"].items() if r["shares"] is not None]
    shapes = ["GG", "FG", "TG"]  # every later stage gated, or only the last behind each fixed middle stage
    assert len(fixed) == 8 and routed == [f"routed-{first}{shape}@{t}" for first in "FT" for shape in shapes for t in ("0.3", "0.7")]
    for name in routed:
        row, versus = report["points"][name], report["against_fixed"][name]
        assert row["depth"][1:] in shapes and abs(sum(row["shares"].values()) - 1.0) < 1e-9
        assert all(d[0] == row["depth"][0] for d in row["shares"])  # stage 0 as the point says
        assert row["depth"][1] == "G" or all(d[1] == row["depth"][1] for d in row["shares"])  # a fixed middle stage too
        rival = report["points"][versus["fixed"]]
        assert versus["speedup"] == pytest.approx(rival["mean_ms"] / row["mean_ms"])
        assert versus["accuracy_gain"] == pytest.approx(row["accuracy"] - rival["accuracy"])
        at_least_as_accurate = [r for n, r in report["points"].items() if n in fixed and r["accuracy"] >= row["accuracy"] - report["same_accuracy"]]
        if at_least_as_accurate:  # the fastest of them
            assert rival["accuracy"] >= row["accuracy"] - report["same_accuracy"] and rival["mean_ms"] == min(r["mean_ms"] for r in at_least_as_accurate)
        else:  # more accurate than every fixed depth: against the most accurate
            assert rival["accuracy"] == max(report["points"][n]["accuracy"] for n in fixed)
    assert report["beats_fixed"] == any(v["speedup"] > 1 for v in report["against_fixed"].values())


def test_a_hot_board_runs_base_variants_only_under_a_replayed_trace(
    routed_built: tuple[Path, dict[int, dg.DepthGate]], real_images: np.ndarray, tmp_path: Path,
) -> None:
    folder, _ = routed_built
    engines = linked_copy(folder, tmp_path / "cap", lambda m: m["operating_points"].append({"name": "base", "thresholds": [None, None], "depth": "TTT"}))
    manifest = load_manifest(engines)
    measured = {"full": {"mean_ms": 1.0, "accuracy": 0.93}, "routed": {"mean_ms": 0.8, "accuracy": 0.92}, "base": {"mean_ms": 0.6, "accuracy": 0.90}}
    rungs = ladder(manifest, measured, names=["full", "routed", "base"])
    assert [r.base_only for r in rungs] == [False, False, True]
    with pytest.raises(PolicyError, match="base_only_above_c needs a point on the ladder that runs every stage at its base variant"):
        Governor(rungs[:2], Policy(base_only_above_c=70.0))
    temperatures = [50 + t for t in range(25)] + [74 - t for t in range(25)]  # up to 74 C and back down to 50
    trace = tmp_path / "heat.csv"
    trace.write_text("time,temp.tj,trip.tj.passive,trip.tj.hot\n" + "".join(f"{t},{c},85.0,95.0\n" for t, c in enumerate(temperatures)))
    clock = [0.0]
    source = ReplaySource(trace, clock=lambda: clock[0])
    runtime = Runtime(engines, operating_point="routed")
    governor = Governor(rungs, Policy(base_only_above_c=70.0, hysteresis_c=3.0, min_dwell_s=2.0), runtime.set_operating_point)
    served = []
    for t in range(len(temperatures)):
        clock[0] = float(t)
        reading = source.read()
        governor.tick(clock[0], reading)
        result = runtime.infer(real_images[:8])
        served.append((reading.temperatures["tj"], runtime.depth, result.depths))
    capped = [depth for temp, depth, _ in served if temp >= 70.0]
    assert capped and set(capped) == {"TTT"}
    cooling = [depth for temp, depth, _ in served[25:] if 67.0 < temp < 70.0]
    assert cooling and set(cooling) == {"TTT"}  # within the hysteresis: still capped
    assert served[0][1] == "FFF" and served[-1][1] == "FFF"  # cool: the most accurate point, before and after
    back_up = [paths for temp, depth, paths in served[25:] if depth == "FGG"]
    assert back_up and all(paths is not None and len(paths) == 8 for paths in back_up)  # one level at a time: per-input depth on the way


def test_a_per_input_point_is_compared_with_the_fastest_fixed_depth_as_accurate_within_the_noise() -> None:
    fixed = {"TTT": {"accuracy": 0.9154, "mean_ms": 0.510}, "FTT": {"accuracy": 0.9165, "mean_ms": 0.608}, "FFF": {"accuracy": 0.9170, "mean_ms": 0.808}}
    routed = {"accuracy": 0.9155, "mean_ms": 0.572}
    assert against_fixed(routed, fixed)["fixed"] == "FTT"  # one image more than TTT: strictly, only FTT and FFF are as accurate
    within_noise = against_fixed(routed, fixed, 0.001)
    assert within_noise["fixed"] == "TTT" and within_noise["speedup"] == pytest.approx(0.510 / 0.572)
    beyond = against_fixed({"accuracy": 0.9200, "mean_ms": 0.7}, fixed, 0.001)
    assert beyond["fixed"] == "FFF" and beyond["speedup"] == pytest.approx(0.808 / 0.7) and beyond["accuracy_gain"] == pytest.approx(0.003)
