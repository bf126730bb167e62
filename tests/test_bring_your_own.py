"""The README's "Bring your own network" flow, end to end on a tiny model and data.

A plain PyTorch script (no code of this project) trains a torchvision ResNet-18 for one
epoch on a small image folder and saves its state_dict; then this project's commands
list the cut points, train exits (frozen and joint) on the folder, calibrate, build
engines, serve them with edged, and answer tritonclient."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from calibration.data import load_dataset
from edge.daemon.config import DaemonConfig
from edge.daemon.main import Daemon
from edge.manifest import load_manifest
from engines.checkpoint import load_checkpoint
from tests.boards import orin_nano
from tools import build_engines, calibrate, intake, train
from tools._cli import run_main

pytest.importorskip("torchvision", reason="the 'vision' extra is not installed")
tritonclient = pytest.importorskip("tritonclient.http", reason="tritonclient[http] (the 'test' extra) is not installed")
SHAPE = "3,32,32"

USER_SCRIPT = textwrap.dedent('''
    import sys
    from pathlib import Path
    import numpy as np, torch, torchvision
    from PIL import Image

    root, out = Path(sys.argv[1]), Path(sys.argv[2])
    classes = sorted(p.name for p in root.iterdir())
    files = [(f, c) for c, name in enumerate(classes) for f in sorted((root / name).iterdir())]
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    def load(f):
        x = np.asarray(Image.open(f).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
        return ((x - mean) / std).transpose(2, 0, 1).astype(np.float32)
    x = torch.from_numpy(np.stack([load(f) for f, _ in files]))
    y = torch.tensor([c for _, c in files])
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=len(classes))
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    net.train()
    for i in torch.randperm(len(x)).split(32):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(net(x[i]), y[i]).backward()
        opt.step()
    torch.save({"model": net.state_dict(), "epoch": 1}, out)
''')


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """scikit-learn digits as 24x24 RGB PNGs: root/train/<class>/ and root/test/<class>/."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    for split, count in (("train", 400), ("test", 120)):
        data = load_dataset("digits", split).subset(slice(0, count))
        for i, (image, label) in enumerate(zip(data.images, data.labels)):
            folder = root / split / f"digit{label}"
            folder.mkdir(parents=True, exist_ok=True)
            gray = Image.fromarray((image[0] * 255).astype(np.uint8)).resize((24, 24))
            gray.convert("RGB").save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def user_weights(image_folder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("user") / "resnet18.pth"
    script = out.parent / "train_mine.py"
    script.write_text(USER_SCRIPT)
    subprocess.run([sys.executable, str(script), str(image_folder / "train"), str(out)], check=True, timeout=600)
    return out


def test_bring_your_own_network_from_weights_to_edged(
    image_folder: Path, user_weights: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    data = f"folder:{image_folder}"
    source = ["--source", "torchvision:resnet18", "--weights", str(user_weights), "--input-shape", SHAPE]

    assert run_main(intake.main, [*source, "--num-classes", "10", "--rounds", "5", "--splits", "layer2,layer3"]) == 0
    listed = capsys.readouterr().out
    assert "layer2.1" in listed and "proposed split points" in listed
    assert "chain at layer2,layer3: equal to the network" in listed

    out = tmp_path / "mine"
    args = [*source, "--data", data, "--splits", "layer2,layer3", "--exits", "frozen,joint", "--epochs", "1", "--out", str(out)]
    assert run_main(train.main, args) == 0
    assert "static (your weights" in capsys.readouterr().out
    _assert_static_is_the_users_network(out / "static.pt", user_weights)

    calibrated = tmp_path / "calibrated"
    args = ["--checkpoint", str(out / "joint.pt"), "--static", str(out / "static.pt"), "--data", data,
            "--out", str(calibrated), "--profile-calls", "30", "--no-int8", "--calibration-samples", "100"]
    assert run_main(calibrate.main, args) == 0
    manifest = load_manifest(calibrated / "engines")
    assert manifest.input.shape == ["batch", 3, 32, 32] and len(manifest.segments) == 3
    assert manifest.classes == [f"digit{i}" for i in range(10)]

    engines = tmp_path / "engines"
    assert run_main(build_engines.main, [str(out / "frozen.pt"), "--out", str(engines), "--data", data]) == 0

    daemon = Daemon(DaemonConfig(grpc_port=0, model_repository=str(calibrated / "engines"), port=0, sensors="sysfs",
                                 sysfs_root=str(orin_nano(tmp_path)), tick_s=0.05))
    daemon.start()
    try:
        host, port = daemon.address
        test = load_dataset(data, "test", (3, 32, 32))
        images = np.ascontiguousarray(test.images[:4])
        tensor = tritonclient.InferInput(manifest.input.name, list(images.shape), "FP32")
        tensor.set_data_from_numpy(images)
        client = tritonclient.InferenceServerClient(f"{host}:{port}", network_timeout=60)
        reply = client.infer("engines", [tensor], outputs=[tritonclient.InferRequestedOutput("probabilities")])
        probabilities = reply.as_numpy("probabilities")
    finally:
        daemon.stop()
    assert probabilities.shape == (4, 10)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, atol=1e-4)


def _assert_static_is_the_users_network(static: Path, weights: Path) -> None:
    """The static model answers exactly as the user's network with the user's weights."""
    import torchvision

    spec, backbone, _ = load_checkpoint(static)
    net = torchvision.models.resnet18(num_classes=10)
    net.load_state_dict(torch.load(weights, weights_only=True)["model"])
    x = torch.rand(3, 3, 32, 32)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(backbone(x), net.eval()((x - mean) / std), rtol=0, atol=1e-5)
    assert spec.backbone == "torchvision:resnet18" and spec.weights_sha256 is not None
