"""The command-line tools end to end on scikit-learn digits, and their one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration import pipeline
from calibration.data import load_digits
from calibration.points import budget_answer
from calibration.train import TrainConfig
from edge.manifest import load_manifest
from edge.runtime import Runtime
from engines.checkpoint import load_checkpoint, save_checkpoint
from tools import build_engines, calibrate, quickstart, train
from tools._cli import run_main

TINY = TrainConfig(epochs=1, batch_size=64, progress=False)


def test_quickstart_runs_end_to_end_on_digits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--data", "digits", "--arch", "resnet8", "--out", str(tmp_path), "--epochs", "2", "--calibration-samples", "300", "--max-drop", "0.05"]
    assert run_main(quickstart.main, args) == 0
    printed = capsys.readouterr().out
    assert "static model" in printed and "exit histogram" in printed
    summary = json.loads((tmp_path / "quickstart.json").read_text())
    paid = summary["chain"]["mean_ms"] < summary["static"]["mean_ms"]
    assert summary["verdict"] in printed and summary["verdict"].startswith("exits pay" if paid else "exits do not pay")
    chain = summary["chain"]
    assert chain["samples"] == len(load_digits("test"))
    assert sum(chain["exit_fractions"]) == pytest.approx(1.0)
    manifest = load_manifest(tmp_path / "engines")
    assert manifest.default_operating_point == ("balanced" if summary["threshold"] is not None else "full")
    assert (tmp_path / "engines" / "static.onnx").is_file()


def test_cli_prints_missing_dataset_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = run_main(quickstart.main, ["--data", f"idx:{tmp_path / 'nowhere'}", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 1
    assert err.startswith("error: ") and "\n" not in err
    assert "nowhere" in err


@pytest.fixture(scope="module")
def exit_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    train = load_digits("train")
    spec = pipeline.backbone_spec("resnet8", train, widths=[8, 8, 8])
    static = pipeline.static_model(spec, train, TINY, folder / "static.pt")
    spec.split_points = ["layer1"]
    pipeline.multi_exit_model(spec, "frozen", train, TINY, folder / "frozen.pt", static=static)
    return folder


def test_build_engines_writes_a_loadable_manifest_with_points(exit_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "engines"
    args = [str(exit_checkpoint / "frozen.pt"), "--out", str(out), "--data", "digits", "--point", "eager=0.5", "--point", "off=none"]
    assert run_main(build_engines.main, args) == 0
    manifest = load_manifest(out)
    assert [p.name for p in manifest.operating_points] == ["full", "eager", "off"]
    assert manifest.point("eager").thresholds == [0.5]
    assert manifest.point("off").thresholds == [None]
    runtime = Runtime(manifest, operating_point="eager")
    result = runtime.infer(load_digits("test").images[:10])
    assert result.probabilities.shape == (10, 10)


@pytest.mark.parametrize(
    ("extra", "message"),
    [(["--point", "eager=0.5,0.5"], "1 early exits"), (["--point", "eager"], "NAME=T1"), (["--point", "x=abc"], "numbers")],
)
def test_build_engines_rejects_bad_points(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], extra: list[str], message: str) -> None:
    args = [str(exit_checkpoint / "frozen.pt"), "--out", str(tmp_path), "--data", "digits", *extra]
    assert run_main(build_engines.main, args) == 1
    assert message in capsys.readouterr().err


def test_build_engines_refuses_a_plain_backbone(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run_main(build_engines.main, [str(exit_checkpoint / "static.pt"), "--out", str(tmp_path), "--data", "digits"]) == 1
    assert "no exits" in capsys.readouterr().err


def test_build_engines_refuses_mismatched_dataset(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("needs Debian's dataset-fashion-mnist (other classes than the digits network's)")
    assert run_main(build_engines.main, [str(exit_checkpoint / "frozen.pt"), "--out", str(tmp_path)]) == 1
    assert "its classes differ from those of the model" in capsys.readouterr().err


def test_runtime_modules_never_import_torch() -> None:
    code = (
        "import sys, edge.runtime, edge.manifest, edge.backends.onnxruntime_backend;"
        "sys.exit(1 if 'torch' in sys.modules else 0)"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_every_module_imports_without_optional_extras() -> None:
    code = (
        "import importlib, pkgutil, sys\n"
        "sys.modules['torchvision'] = None  # as if the vision extra were absent\n"
        "for pkg in ('edge', 'engines', 'calibration', 'tools'):\n"
        "    mod = importlib.import_module(pkg)\n"
        "    for info in pkgutil.walk_packages(mod.__path__, pkg + '.'):\n"
        "        importlib.import_module(info.name)\n"
        "from engines.registry import create_backbone\n"
        "from edge.errors import MissingDependencyError\n"
        "try:\n"
        "    create_backbone('tv_resnet18')\n"
        "except MissingDependencyError as e:\n"
        "    assert 'vision' in str(e), e\n"
        "else:\n"
        "    raise SystemExit('expected MissingDependencyError')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_calibrate_end_to_end_on_digits(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = [
        "--checkpoint", str(exit_checkpoint / "frozen.pt"), "--static", str(exit_checkpoint / "static.pt"),
        "--data", "digits", "--out", str(tmp_path), "--profile-calls", "60", "--budget-ms", "0.0001",
    ]
    assert run_main(calibrate.main, args) == 0
    printed = capsys.readouterr().out
    assert "budget query: no operating point meets 0.000 ms" in printed
    report = json.loads((tmp_path / "calibration.json").read_text())
    manifest = load_manifest(tmp_path / "engines")
    assert manifest.profile is not None
    for precision in ("fp32", "int8"):
        assert manifest.profile[precision]["1"]["model"]["segment_ms"][0] > 0
    names = {p.name for p in manifest.operating_points}
    assert {"full", "entropy-balanced", "maxprob-balanced", "gate-balanced", "gate-budget", "int8-full", "int8-gate-balanced"} <= names
    assert all(s.variants["int8"]["file"].endswith(".onnx") for s in manifest.segments)
    assert set(report["int8_activation_ms"]) == {"uint8", "int8"}
    int8_files = {p.name for p in (tmp_path / "engines").glob("*int8*.onnx")}
    assert int8_files == {s.variants["int8"]["file"] for s in manifest.segments}  # the slower type's files are gone
    for point in manifest.operating_points:
        m = point.measured
        assert 0.0 <= m["accuracy"] <= 1.0 and m["mean_ms"] > 0 and m["p99_ms"] >= m["mean_ms"] * 0.5
        assert point.engine == "static" or m["predicted_mean_ms"] > 0
    assert manifest.point("static").engine == "static" and report["verdict"] in printed
    assert len(report["temperatures"]) == 2 and all(row["temperature"] > 0 for row in report["temperatures"])
    assert report["budget"]["met"] is False
    assert (tmp_path / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    runtime = Runtime(manifest, operating_point="gate-balanced")
    assert runtime.criterion == "gate"
    result = runtime.infer(load_digits("test").images[:20])
    assert result.operating_point == "gate-balanced" and result.probabilities.shape == (20, 10)
    runtime.set_operating_point("int8-full")
    assert runtime.precision == "int8"
    int8 = runtime.infer(load_digits("test").images[:20])
    fp32 = runtime.infer(load_digits("test").images[:20], precision="fp32", thresholds=[None])
    assert np.mean(int8.predictions == fp32.predictions) >= 0.8  # same model, quantized
    assert np.abs(int8.probabilities - fp32.probabilities).max() > 0  # really other engines


def test_where_exits_cannot_pay_calibration_serves_the_static_engine_and_says_so(
    exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """A tiny network whose exits know nothing (untrained heads after layer1 and layer2):
    no exit can be taken within 0.5 points, so every point runs the whole chain, three
    engine calls against the static model's one."""
    spec, static, _ = load_checkpoint(exit_checkpoint / "static.pt")
    spec.split_points = ["layer1", "layer2"]
    torch.manual_seed(0)
    net = spec.build()  # fresh heads on ...
    net.backbone.load_state_dict(static.state_dict())  # ... the trained static backbone
    save_checkpoint(tmp_path / "blind.pt", spec, net, {})
    args = ["--checkpoint", str(tmp_path / "blind.pt"), "--static", str(exit_checkpoint / "static.pt"), "--data", "digits",
            "--out", str(tmp_path / "cal"), "--profile-calls", "60", "--no-int8"]
    assert run_main(calibrate.main, args) == 0
    printed = capsys.readouterr().out
    manifest = load_manifest(tmp_path / "cal" / "engines")
    figures = {p.name: (round(p.measured["mean_ms"], 4), p.measured["exit_fractions"]) for p in manifest.operating_points}
    assert manifest.default_operating_point == "static" and manifest.point("static").engine == "static", figures
    assert "exits do not pay on this model and this device: the static engine is faster" in printed
    report = json.loads((tmp_path / "cal" / "calibration.json").read_text())
    assert report["verdict"].startswith("exits do not pay")
    images = load_digits("test").images[:20]
    runtime = Runtime(manifest)  # starts at the default: the static engine
    result = runtime.infer(images)
    assert runtime.operating_point == "static" and (result.exits == runtime.num_exits - 1).all()
    from calibration.evaluate import StaticModel

    expected = StaticModel(manifest.path_of(manifest.static_model["file"])).predict(images)  # type: ignore[index]
    np.testing.assert_allclose(result.probabilities, expected, atol=1e-6)
    chain = runtime.infer(images, thresholds=[None, None], whole=False)  # an override runs the chain at full depth
    assert chain.operating_point == "custom" and chain.segment_ms[0] > 0
    # every exit off: the chain's own network in one engine (this chain's backbone is the static one)
    whole = runtime.infer(images, thresholds=[None, None])
    assert whole.segment_ms[:2] == [0.0, 0.0] and manifest.whole_model is not None
    np.testing.assert_allclose(whole.probabilities, expected, atol=1e-5)
    runtime.close()


def test_budget_answer_picks_the_most_accurate_point_within_budget() -> None:
    points = [
        {"name": "a", "mean_ms": 1.0, "accuracy": 0.9},
        {"name": "b", "mean_ms": 0.5, "accuracy": 0.85},
        {"name": "c", "mean_ms": 0.4, "accuracy": 0.8},
    ]
    answer = budget_answer(0.6, points)
    assert answer["met"] and answer["point"] == "b"
    assert not budget_answer(0.3, points)["met"]
    assert "the fastest, c, measured 0.400 ms" in budget_answer(0.3, points)["message"]


@pytest.mark.parametrize(
    ("which", "message"),
    [("static", "plain backbone has no exits"), ("missing", "checkpoint not found")],
)
def test_calibrate_refuses_bad_checkpoints_in_one_line(
    exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, message: str,
) -> None:
    path = exit_checkpoint / ("static.pt" if which == "static" else "nope.pt")
    assert run_main(calibrate.main, ["--checkpoint", str(path), "--data", "digits", "--out", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err


def test_calibrate_refuses_a_dataset_the_network_does_not_take(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["--checkpoint", str(exit_checkpoint / "frozen.pt"), "--data", "fashion-mnist", "--out", str(tmp_path)]
    assert run_main(calibrate.main, args) == 1
    assert "its classes differ from those of the model" in capsys.readouterr().err


def test_train_goes_on_from_a_checkpoint_and_records_which(exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    init = exit_checkpoint / "static.pt"
    args = ["--init", str(init), "--data", "digits", "--out", str(tmp_path), "--exits", "", "--epochs", "1", "--lr", "0.01"]
    assert run_main(train.main, args) == 0
    assert "static: test accuracy" in capsys.readouterr().out
    _, before, _ = load_checkpoint(init)
    spec, after, meta = load_checkpoint(tmp_path / "static.pt")
    assert spec == load_checkpoint(init)[0]  # same architecture, whatever --arch says
    assert meta["backbone_sha256"] == pipeline.weights_fingerprint(before)
    assert meta["epochs_done"] == 1
    moved = [not torch.equal(a, b) for a, b in zip(before.state_dict().values(), after.state_dict().values())]
    assert any(moved)


@pytest.mark.parametrize(
    ("which", "data", "message"),
    [("frozen.pt", "digits", "not a plain backbone checkpoint"), ("static.pt", "fashion-mnist", "does not fit fashion-mnist")],
)
def test_train_refuses_an_init_it_cannot_go_on_from(
    exit_checkpoint: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], which: str, data: str, message: str,
) -> None:
    args = ["--init", str(exit_checkpoint / which), "--data", data, "--out", str(tmp_path), "--exits", ""]
    assert run_main(train.main, args) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err
    assert not (tmp_path / "static.pt").exists()
