"""Exit placement: costs of any exit subset from the pieces measured once, and the search."""

import numpy as np
import pytest
import torch

from calibration.exits import ExitTable
from calibration.placement import CandidateCosts, candidate_costs, place_exits, sub_table
from calibration.thresholds import Target
from engines.partition import MultiExitNetwork
from engines.registry import create_backbone

N = 2000


def costs(heads: list[float], boundary: float = 0.02) -> CandidateCosts:
    # four pieces of 0.1 ms: three candidates
    return CandidateCosts([0.1, 0.1, 0.1, 0.1], heads, boundary, overhead_ms=0.01)


def test_a_chain_is_predicted_from_its_pieces():
    c = costs([0.01, 0.02, 0.03])
    uncut = c.latency_model([])
    assert uncut.segment_ms == pytest.approx([0.4 - 3 * 0.02])
    model = c.latency_model([1])  # pieces 0-1 with exit 1's head, then pieces 2-3
    assert model.segment_ms == pytest.approx([0.2 - 0.02 + 0.02, 0.2 - 0.02])
    assert model.trunk_ms == pytest.approx([0.2 - 0.02])
    # every sample reaches both segments: one boundary and one head more than uncut
    assert model.predict([1.0, 1.0], [-1.0]) - c.static_ms() == pytest.approx(0.02 + 0.02)


def test_costs_from_a_profile_share_what_the_cut_adds_among_its_boundaries():
    c = candidate_costs([0.15, 0.12, 0.1], [0.1, 0.1], overhead_ms=0.02, static_ms=0.26)
    assert c.trunk_ms == [0.1, 0.1, 0.1] and c.head_ms == pytest.approx([0.05, 0.02])
    assert c.boundary_ms == pytest.approx((0.3 + 0.02 - 0.26) / 2)
    assert c.static_ms() == pytest.approx(0.26)


def table(confident_at: int) -> ExitTable:
    """Three candidates and the final exit; the final exit is right on every sample. The
    candidate `confident_at` is right and sure on 80% of them; the others are unsure."""
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 10, N)
    predictions = np.stack([rng.integers(0, 10, N) for _ in range(3)] + [labels])
    entropies = np.full((4, N), 2.0)
    entropies[3] = 0.1
    sure = rng.random(N) < 0.8
    predictions[confident_at, sure] = labels[sure]
    entropies[confident_at, sure] = 0.05
    return ExitTable(predictions, entropies, labels)


def test_the_search_places_the_exit_that_pays_and_no_other():
    placement = place_exits(table(1), costs([0.01, 0.01, 0.01]), Target(max_drop=0.005))
    assert placement.chosen == [1]
    assert placement.plan.feasible and placement.plan.accuracy == 1.0
    assert placement.plan.exit_fractions[0] == pytest.approx(0.8, abs=0.03)
    assert placement.plan.predicted_ms < costs([0.01] * 3).static_ms()


def test_an_exit_whose_head_costs_more_than_it_saves_is_left_out():
    placement = place_exits(table(2), costs([0.01, 0.01, 0.5], boundary=0.02), Target(max_drop=0.005))
    assert placement.chosen == []  # the static network is the answer
    assert placement.plan.predicted_ms == pytest.approx(costs([0.01] * 3).static_ms())


def test_sub_table_keeps_the_chosen_rows_and_the_final_one():
    t = table(1)
    sub = sub_table(t, [0, 2])
    assert sub.num_exits == 3
    assert (sub.predictions[1] == t.predictions[2]).all() and (sub.predictions[2] == t.labels).all()


def test_with_exits_shares_the_backbone_and_the_chosen_heads():
    backbone = create_backbone("resnet14", input_shape=[1, 8, 8], num_classes=4)
    net = MultiExitNetwork(backbone, ["layer1.0", "layer2.0", "layer3.0"]).eval()
    sub = net.with_exits([0, 2]).eval()
    assert sub.exit_names() == ["layer1.0", "layer3.0", "final"]
    assert sub.exit_heads[1] is net.exit_heads[2] and sub.backbone is net.backbone
    x = torch.rand(3, 1, 8, 8)
    full, part = net(x), sub(x)
    for a, b in zip(part, [full[0], full[2], full[3]]):
        torch.testing.assert_close(a, b)
    with pytest.raises(ValueError, match="at least one early exit"):
        net.with_exits([])

