"""Learned exit gates: the cost-weighted loss, training on a real network's exits, the
alpha bisection, and the gate exported into real engines."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from calibration import gates as gating
from calibration.exits import outcome
from calibration.latency import LatencyModel
from edge.runtime import Runtime
from engines.build import BuildOptions, build_engines
from tests.helpers import reference_session, run_named

MODEL = LatencyModel(segment_ms=[0.2, 0.2, 0.2], trunk_ms=[0.18, 0.18], overhead_ms=0.02)
TEMPS = [1.0, 1.0, 1.0]


def test_gate_loss_by_hand() -> None:
    gates = torch.tensor([[0.5], [0.25]])  # one sample, two early exits
    ce = torch.tensor([[2.0], [1.0], [0.5]])
    costs = torch.tensor([0.2, 0.6, 1.0])
    leave = [0.5, 0.5 * 0.25, 0.5 * 0.75]
    expected_ce = sum(p * c for p, c in zip(leave, [2.0, 1.0, 0.5]))
    expected_cost = sum(p * c for p, c in zip(leave, [0.2, 0.6, 1.0]))
    got = gating.gate_loss(gates, ce, costs, alpha=0.3)
    assert got.item() == pytest.approx(0.7 * expected_ce + 0.3 * expected_cost)


@pytest.fixture(scope="module")
def data(net, digits_train) -> gating.GateData:
    return gating.gate_data(net, digits_train, TEMPS)


def test_gate_data_matches_the_network(net, digits_train, data: gating.GateData) -> None:
    assert len(data.inputs) == 2 and data.cross_entropy.shape == (3, len(digits_train))
    with torch.no_grad():
        logits = net(torch.from_numpy(digits_train.images[:5]))
    np.testing.assert_allclose(data.logits[2][:5], logits[2].numpy(), rtol=0, atol=1e-5)


def test_more_alpha_leaves_earlier(data: gating.GateData) -> None:
    costs = gating.exit_costs(MODEL)
    reach = []
    for alpha in (0.0, 0.3, 0.9):
        gates = gating.train_gates(data, costs, alpha)
        result = outcome(gating.gate_table(gates, data, TEMPS), [0.5, 0.5], "gate")
        reach.append(MODEL.predict(result.reach_fractions, [0.5, 0.5]))
    assert reach[0] > reach[1] > reach[2]


def test_folded_gate_reads_raw_features_and_probs(net, digits_train, data: gating.GateData) -> None:
    gates = gating.train_gates(data, gating.exit_costs(MODEL), 0.2)
    x = torch.from_numpy(digits_train.images[:7])
    with torch.no_grad():
        features, logits = net.segments[0](x)
        g = gates[0](features, torch.softmax(logits, dim=1))
    scores = gating.gate_scores(gates, data)
    np.testing.assert_allclose(1.0 - g.numpy(), scores[0, :7], rtol=0, atol=1e-5)


def test_budget_bisection_meets_the_budget_or_says_it_cannot(data: gating.GateData) -> None:
    full = MODEL.predict([1, 1, 1], [0.5, 0.5])
    result = gating.gates_for_budget(data, TEMPS, MODEL, 0.8 * full, steps=6)
    assert result.feasible and result.predicted_ms <= 0.8 * full
    assert 0.0 < result.alpha < 1.0
    cannot = gating.gates_for_budget(data, TEMPS, MODEL, 0.1, steps=6)
    assert not cannot.feasible and cannot.predicted_ms > 0.1


def test_accuracy_bisection_keeps_the_accuracy_floor(data: gating.GateData) -> None:
    final = float((data.logits[-1].argmax(1) == data.labels).mean())
    result = gating.gates_for_accuracy(data, TEMPS, MODEL, final - 0.02, steps=6)
    assert result.feasible and result.accuracy >= final - 0.02


def test_gates_in_the_engines_match_torch_and_drive_the_runtime(net, data: gating.GateData, digits_test, tmp_path: Path) -> None:
    gates = gating.train_gates(data, gating.exit_costs(MODEL), 0.3)
    temps = [1.3, 0.8, 1.0]
    manifest = build_engines(net, tmp_path, digits_test.classes, digits_test.images[:16],
                             options=BuildOptions(name="gated", include_static=False), temperatures=temps, gates=gates)
    assert manifest.segments[0].score_outputs == {"entropy": "entropy", "maxprob": "maxprob", "gate": "gate"}
    assert "gate" not in manifest.segments[-1].score_outputs
    assert [e.temperature for e in manifest.exits] == temps
    x = np.ascontiguousarray(digits_test.images[:50])
    out = run_named(reference_session(tmp_path / manifest.segments[0].file), x)
    expected = gating.gate_scores(gates, gating.gate_data(net, digits_test.subset(slice(0, 50)), temps))
    np.testing.assert_allclose(out["gate"], expected[0], rtol=0, atol=1e-5)
    runtime = Runtime(manifest)
    result = runtime.infer(x, thresholds=[0.5, 0.5], criterion="gate")
    taken = np.where(expected[0] <= 0.5, 0, np.where(expected[1] <= 0.5, 1, 2))
    agree = (result.exits == taken).mean()
    assert agree >= 0.98  # float32 engines vs float32 torch: only scores within 1e-5 of 0.5 may differ
