"""Training on scikit-learn digits with a tiny ResNet: frozen vs joint exits, seeds, checkpoints."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from calibration import pipeline
from calibration.data import Dataset, load_digits
from calibration.train import (
    Distillation,
    TrainConfig,
    exit_accuracies,
    exit_loss,
    random_shift,
    train_backbone,
    train_exits_frozen,
    train_joint,
)
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone

FAST = TrainConfig(epochs=3, batch_size=64, progress=False)


@pytest.fixture(scope="module")
def digits() -> tuple[Dataset, Dataset]:
    return load_digits("train"), load_digits("test")


def tiny_backbone(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return create_backbone("resnet8", input_shape=(1, 8, 8), num_classes=10)


def state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_backbone_training_learns(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    backbone = tiny_backbone()
    before = exit_accuracies(backbone, test)[0]
    losses = train_backbone(backbone, train, FAST)
    assert losses[-1] < losses[0]
    assert exit_accuracies(backbone, test)[0] > max(0.8, before + 0.3)


def test_frozen_exits_leave_backbone_untouched(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    backbone = tiny_backbone()
    train_backbone(backbone, train, FAST)
    net = MultiExitNetwork(backbone, ["layer1", "layer2"])
    backbone_before, heads_before = state(backbone), state(net.exit_heads)
    early_before = exit_accuracies(net, test)[:2]
    train_exits_frozen(net, train, FAST)
    for name, tensor in backbone.state_dict().items():  # weights and BN running statistics
        assert torch.equal(tensor, backbone_before[name]), name
    assert any(not torch.equal(t, heads_before[n]) for n, t in net.exit_heads.state_dict().items())
    early_after = exit_accuracies(net, test)[:2]
    assert all(a > b for a, b in zip(early_after, early_before))
    assert all(p.requires_grad for p in backbone.parameters()), "backbone must be trainable again afterwards"


def test_joint_training_trains_backbone_and_every_exit(digits: tuple[Dataset, Dataset]) -> None:
    train, test = digits
    net = MultiExitNetwork(tiny_backbone(), ["layer1", "layer2"])
    before = state(net.backbone)
    train_joint(net, train, FAST)
    assert any(not torch.equal(t, before[n]) for n, t in net.backbone.state_dict().items())
    assert all(acc > 0.5 for acc in exit_accuracies(net, test))


def test_joint_training_rejects_wrong_weight_count(digits: tuple[Dataset, Dataset]) -> None:
    net = MultiExitNetwork(tiny_backbone(), ["layer1"])
    with pytest.raises(ValueError, match="exit weights"):
        train_joint(net, digits[0], FAST, exit_weights=[1.0])


def test_training_is_reproducible(digits: tuple[Dataset, Dataset]) -> None:
    small = digits[0].subset(slice(0, 256))
    cfg = TrainConfig(epochs=1, batch_size=64, shift=1, flip=True, progress=False)
    a, b = tiny_backbone(0), tiny_backbone(0)
    train_backbone(a, small, cfg)
    train_backbone(b, small, cfg)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name


def test_random_shift_moves_each_image_by_its_own_offset() -> None:
    x = torch.arange(2 * 1 * 5 * 5, dtype=torch.float32).view(2, 1, 5, 5) + 1
    shifted = random_shift(x, 1, torch.Generator().manual_seed(3))
    assert shifted.shape == x.shape
    for i in range(2):
        # every shifted image is a translate of the original: compare with all 9 candidates
        padded = torch.nn.functional.pad(x[i], (1, 1, 1, 1))
        candidates = [padded[:, dy : dy + 5, dx : dx + 5] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(shifted[i], c) for c in candidates)


def test_pipeline_reuses_finished_checkpoint_and_retrains_on_new_recipe(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train = digits[0].subset(slice(0, 256))
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    spec = pipeline.backbone_spec("resnet8", train, widths=[8, 8, 8])
    path = tmp_path / "static.pt"
    first = pipeline.static_model(spec, train, cfg, path)
    stamp = path.stat().st_mtime_ns
    again = pipeline.static_model(spec, train, cfg, path)
    assert path.stat().st_mtime_ns == stamp, "a finished checkpoint must be reused, not retrained"
    for x, y in zip(first.state_dict().values(), again.state_dict().values()):
        assert torch.equal(x, y)
    pipeline.static_model(spec, train, TrainConfig(epochs=1, batch_size=32, progress=False), path)
    assert path.stat().st_mtime_ns != stamp, "another recipe must retrain"
    assert [p.name for p in tmp_path.iterdir()] == ["static.pt"], "no temp files left behind"


def test_frozen_mode_needs_static_backbone(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    spec = pipeline.backbone_spec("resnet8", digits[0])
    spec.split_points = ["layer1"]
    with pytest.raises(ValueError, match="static backbone"):
        pipeline.multi_exit_model(spec, "frozen", digits[0], FAST, tmp_path / "x.pt")
    with pytest.raises(ValueError, match="exit training"):
        pipeline.multi_exit_model(spec, "sideways", digits[0], FAST, tmp_path / "x.pt")


def test_exit_accuracy_counts_correct_predictions(digits: tuple[Dataset, Dataset]) -> None:
    test = digits[1]
    backbone = tiny_backbone()
    with torch.no_grad():
        predictions = backbone.eval()(torch.from_numpy(test.images)).argmax(1).numpy()
    assert exit_accuracies(backbone, test, batch_size=97)[0] == pytest.approx(np.mean(predictions == test.labels))


def test_frozen_checkpoint_is_retrained_when_its_backbone_changes(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train = digits[0].subset(slice(0, 128))
    cfg = TrainConfig(epochs=1, batch_size=64, progress=False)
    spec = pipeline.backbone_spec("resnet8", train, widths=[8, 8, 8])
    static = spec.build_backbone()
    spec.split_points = ["layer1"]
    path = tmp_path / "frozen.pt"
    pipeline.multi_exit_model(spec, "frozen", train, cfg, path, static=static)
    stamp = path.stat().st_mtime_ns
    pipeline.multi_exit_model(spec, "frozen", train, cfg, path, static=static)
    assert path.stat().st_mtime_ns == stamp
    with torch.no_grad():
        next(static.parameters()).add_(1.0)
    pipeline.multi_exit_model(spec, "frozen", train, cfg, path, static=static)
    assert path.stat().st_mtime_ns != stamp, "heads trained on another backbone must not be reused"


def test_joint_exits_fine_tune_a_copy_of_the_static_backbone(digits: tuple[Dataset, Dataset], tmp_path: Path) -> None:
    train = digits[0].subset(slice(0, 128))
    spec = pipeline.backbone_spec("resnet8", train, widths=[8, 8, 8])
    static = spec.build_backbone()
    before = state(static)
    spec.split_points = ["layer1"]
    still = TrainConfig(epochs=1, batch_size=64, lr=1e-12, weight_decay=0.0, progress=False)
    net = pipeline.multi_exit_model(spec, "joint", train, still, tmp_path / "joint.pt", static=static)
    for name, tensor in static.state_dict().items():
        assert torch.equal(tensor, before[name]), f"the static model itself must stay untouched: {name}"
    for name, tensor in net.backbone.state_dict().items():
        if tensor.is_floating_point() and "running" not in name:
            assert torch.allclose(tensor, before[name], atol=1e-6), f"joint training must start from the static weights: {name}"


def test_exit_loss_distillation_by_hand() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0]])
    teacher = torch.tensor([[0.5, 1.5, 0.0]])
    labels = torch.tensor([1])
    d = Distillation(weight=0.25, temperature=2.0)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    p_teacher = torch.softmax(teacher / 2, dim=1)
    kl = (p_teacher * (p_teacher.log() - torch.log_softmax(logits / 2, dim=1))).sum()
    expected = 0.75 * ce + 0.25 * 4.0 * kl
    assert exit_loss(logits, labels, teacher, d).item() == pytest.approx(expected.item(), rel=1e-6)
    assert exit_loss(logits, labels, teacher, None).item() == pytest.approx(ce.item())
    assert exit_loss(teacher, labels, teacher, Distillation(weight=1.0)).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("mode", ["frozen", "joint"])
def test_distillation_pulls_early_exits_toward_the_final_one(digits: tuple[Dataset, Dataset], mode: str) -> None:
    """Early exits trained with distillation sit closer (KL at T=2, on test images) to
    the final exit than exits trained on labels alone."""
    train, test = digits
    backbone = tiny_backbone()
    train_backbone(backbone, train, FAST)

    def divergence(net: MultiExitNetwork) -> float:
        with torch.no_grad():
            outputs = net(torch.from_numpy(test.images))
        teacher = torch.log_softmax(outputs[-1] / 2, dim=1)
        kls = [F.kl_div(torch.log_softmax(z / 2, dim=1), teacher, log_target=True, reduction="batchmean") for z in outputs[:-1]]
        return float(sum(kls))

    results = {}
    for distill in (None, Distillation(weight=0.9, temperature=2.0)):
        net = MultiExitNetwork(copy.deepcopy(backbone), ["layer1", "layer2"])
        if mode == "frozen":
            train_exits_frozen(net, train, FAST, distill=distill)
        else:
            train_joint(net, train, FAST, distill=distill)
        results[distill is not None] = divergence(net)
    assert results[True] < 0.95 * results[False], results


def test_sharded_fit_gives_each_process_its_own_equal_share_of_every_epoch() -> None:
    """What torchrun ranks see: disjoint batches, the same number of steps each."""
    from calibration.train import fit

    n = 1050
    data = Dataset(np.linspace(0, 1, n, dtype=np.float32).reshape(n, 1, 1, 1), np.zeros(n, dtype=np.int64), ("a",), "ids")
    seen: dict[int, list[list[int]]] = {0: [], 1: []}
    model = torch.nn.Linear(1, 1)
    cfg = TrainConfig(epochs=2, batch_size=100, progress=False)
    for rank in (0, 1):
        def step(x: torch.Tensor, y: torch.Tensor, rank: int = rank) -> float:
            seen[rank].append([round(float(v) * (n - 1)) for v in x.flatten()])
            return 0.0

        fit(model, list(model.parameters()), data, cfg, step, "shard", shard=(rank, 2))
    per_epoch = 11 // 2  # 11 batches, the odd one left out so both ranks take as many steps
    assert len(seen[0]) == len(seen[1]) == 2 * per_epoch
    for epoch in range(2):
        ids = [{i for b in seen[r][epoch * per_epoch:(epoch + 1) * per_epoch] for i in b} for r in (0, 1)]
        assert not ids[0] & ids[1]
        assert len(ids[0]) == len(ids[1]) == 500
