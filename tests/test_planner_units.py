"""The planner's rules: removal order, chunking by round_to, the most a group can lose, the bisection,
and the latency-budget planner following the same order as the plans it makes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fxprune.deploy.budget import greedy_counts, kept_importance
from fxprune.deploy.latency_model import LatencyModel
from fxprune.deploy.lut import LatencyTable
from torch import nn

import fxprune
from fxprune.groups.grouping import Group
from fxprune.measure import count_flops
from fxprune.plan import (
    Plan,
    bisect_ratio,
    chunk_size,
    keep_count,
    make_plan,
    max_removable,
    normalized_scores,
    plan_from_counts,
    removal_costs,
    removal_order,
    removal_rank,
)
from fxprune.targets import SlimmedSize, plan_for_target, slimmed_copy


def bare_group(width: int, frozen=(), divisor: int = 1) -> Group:
    """A group with no layer blocks: only the counting rules apply."""
    return Group(0, np.arange(width), [], {i: "test" for i in frozen}, divisor=divisor)


def net(width: int = 24) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1),
        nn.BatchNorm2d(width),
        nn.ReLU(),
        nn.Conv2d(width, 8, 1),
    ).eval()


X = torch.randn(1, 3, 8, 8)


# -- removal order ----------------------------------------------------------------------------------------
def test_removal_order_lowest_first_ties_by_index_frozen_never():
    g = bare_group(6, frozen=[2])
    scores = np.array([5.0, 1.0, 0.0, 1.0, 3.0, 2.0])
    assert removal_order(g, scores).tolist() == [1, 3, 5, 4, 0]
    rank = removal_rank(g, scores)
    assert rank[[1, 3, 5, 4, 0]].tolist() == [0, 1, 2, 3, 4]
    assert rank[2] == np.iinfo(np.int64).max
    for n in range(1, 6):
        plan = plan_from_counts([g], {0: scores}, {0: n})
        assert plan.remove[0].tolist() == sorted(removal_order(g, scores)[:n].tolist())


def test_plans_of_a_real_model_remove_the_lowest_scores():
    analysis = fxprune.analyze(net(), X)
    scores = analysis.scores("l1")
    plan = make_plan(analysis.groups, scores, 0.25)
    assert plan.remove, "the ratio planner removed nothing"
    for g in analysis.groups:
        if g.id in plan.remove:
            n = len(plan.remove[g.id])
            assert plan.remove[g.id].tolist() == sorted(removal_order(g, scores[g.id])[:n].tolist())


# -- chunking by round_to ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("divisor", "round_to", "chunk"), [(1, 8, 8), (2, 8, 4), (16, 8, 1), (3, 8, 8), (4, 1, 1)]
)
def test_chunk_size_counts_channels_per_atom(divisor, round_to, chunk):
    assert chunk_size(bare_group(32, divisor=divisor), round_to) == chunk


def test_keep_count_rounds_up_to_whole_chunks():
    g = bare_group(20)
    assert keep_count(g, 5, round_to=8) == 16  # 15 kept rounds up to 16
    assert keep_count(g, 5, round_to=1) == 15
    assert keep_count(g, 19, round_to=8) == 8  # one atom would be kept: a whole chunk is
    assert keep_count(bare_group(6), 1, round_to=8) == 6  # rounding past the width keeps the width


def test_round_to_keeps_every_layer_width_a_multiple():
    model = net(24)
    analysis = fxprune.analyze(model, X)
    plan = analysis.plan(0.4, round_to=8)  # 9 of 24 asked for, 15 kept -> 16
    fxprune.apply_plan(analysis, plan, X)
    assert [model[0].out_channels, model[3].out_channels] == [16, 16]


# -- the most a group can lose ----------------------------------------------------------------------------
def test_max_removable_never_empties_a_group():
    assert max_removable(bare_group(4)) == 3
    assert max_removable(bare_group(4), min_width=3) == 1
    assert max_removable(bare_group(4), min_width=10) == 0
    assert max_removable(bare_group(4, frozen=[0, 1])) == 2
    assert max_removable(bare_group(6), round_to=4) == 2  # one whole chunk of 4 stays
    assert max_removable(bare_group(6, frozen=range(6))) == 0


@pytest.mark.parametrize(("round_to", "min_width"), [(1, 1), (1, 5), (8, 1), (4, 10)])
def test_count_plans_stop_at_max_removable(round_to, min_width):
    g = bare_group(24, frozen=[3])
    scores = {0: np.random.default_rng(0).random(24)}
    plan = plan_from_counts([g], scores, {0: 100}, round_to, min_width)
    assert len(plan.remove.get(0, ())) == max_removable(g, round_to, min_width)


def test_high_ratio_keeps_min_width_in_every_layer():
    model = net(24)
    analysis = fxprune.analyze(model, X)
    fxprune.apply_plan(analysis, analysis.plan(0.99, min_width=3, round_to=1), X)
    assert [model[0].out_channels, model[3].out_channels] == [3, 3]


# -- bisection to a target --------------------------------------------------------------------------------
def test_bisect_ratio_lands_just_below_the_target():
    def plan_at(ratio: float) -> Plan:
        return Plan({0: np.arange(int(ratio * 100))})

    def fraction_of(plan: Plan) -> float:
        return 1 - plan.removed_count() / 100

    plan = bisect_ratio(plan_at, fraction_of, 0.37)
    assert 0.36 <= fraction_of(plan) <= 0.37
    with pytest.raises(ValueError, match="cannot reach"):
        bisect_ratio(plan_at, lambda plan: 1.0, 0.5)
    with pytest.raises(ValueError, match="in \\(0, 1\\)"):
        bisect_ratio(plan_at, fraction_of, 1.0)


def test_plan_for_target_meets_the_flops_target():
    analysis = fxprune.analyze(net(32), X)
    dense = count_flops(analysis.model, X)
    before = [p.clone() for p in analysis.model.parameters()]
    plan = plan_for_target(analysis, X, 0.5, "flops", round_to=1)
    frac = count_flops(slimmed_copy(analysis, plan), X) / dense
    assert 0.4 <= frac <= 0.5
    assert all(torch.equal(a, b) for a, b in zip(before, analysis.model.parameters()))  # model untouched


class ScaledByAttribute(nn.Module):
    """A plain tensor attribute (not a buffer) stays on the CPU in a meta copy: the forward fails there."""

    def __init__(self) -> None:
        super().__init__()
        self.body = net(16)
        self.scale = torch.ones(1)

    def forward(self, x):
        return self.body(x) * self.scale


@pytest.mark.parametrize(("model", "on_meta"), [(net(16), True), (ScaledByAttribute(), False)])
@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("from_analysis", [True, False])
def test_slimmed_size_counts_like_a_real_slimmed_copy(model, on_meta, metric, from_analysis):
    analysis = fxprune.analyze(model.eval(), X)
    if not from_analysis:  # as without a cost table: candidates are slimmed on meta or real copies
        analysis.propagation.costs = None
    size = SlimmedSize(analysis, X, metric)
    assert size.costs.exact is from_analysis
    assert from_analysis or size.on_meta is (on_meta or metric == "params")
    for ratio in (0.3, 0.8):
        plan = analysis.plan(ratio, round_to=1)
        slim = slimmed_copy(analysis, plan)
        real = count_flops(slim, X) if metric == "flops" else sum(p.numel() for p in slim.parameters())
        assert size(plan) == real < size.dense


# -- the latency-budget planner uses the planner's order --------------------------------------------------
class FlopTable(LatencyTable):
    """Layer latencies from multiply-adds (no measurement)."""

    def ensure(self, shapes, *, progress=None) -> int:
        for s in shapes:
            self.entries.setdefault(s.key, 1e-4 + s.cin * s.cout * s.h * s.w * 1e-6)
        return 0


def test_latency_model_widths_match_the_plans(tmp_path):
    analysis = fxprune.analyze(net(24), X)
    rng = np.random.default_rng(1)
    scores = {g.id: rng.random(g.width) for g in analysis.groups}
    table = FlopTable("ort", "fp32", 1, tmp_path / "lut.json")
    lm = LatencyModel.build(analysis, X, table, 1, scores=scores)
    layers = {layer.name: layer for layer in lm.layers}
    gid = layers["0"].out_group
    assert gid is not None and layers["3"].in_group == gid
    for n in (1, 5, 11, 23):
        plan = plan_from_counts(analysis.groups, scores, {gid: n})
        slim = slimmed_copy(analysis, plan)
        assert lm.channels(layers["3"], {gid: n})[0] == slim[3].in_channels == 24 - n
        assert lm.channels(layers["0"], {gid: n})[1] == slim[0].out_channels


def test_budget_costs_are_the_importance_the_plan_removes():
    analysis = fxprune.analyze(net(24), X)
    rng = np.random.default_rng(2)
    scores = {g.id: rng.random(g.width) for g in analysis.groups}
    g = analysis.prunable_groups[0]
    for n in (3, 10):
        plan = plan_from_counts(analysis.groups, scores, {g.id: n})
        removed = normalized_scores(scores[g.id])[plan.remove[g.id]].sum()
        assert removal_costs(g, scores[g.id])[:n].sum() == pytest.approx(removed)
        total = sum(removal_costs(h, scores[h.id]).sum() for h in analysis.prunable_groups)
        assert kept_importance(analysis.groups, scores, plan) == pytest.approx(1 - removed / total)


def test_greedy_counts_respect_chunks_and_caps(tmp_path):
    analysis = fxprune.analyze(net(24), X)
    scores = analysis.scores()
    lm = LatencyModel.build(analysis, X, FlopTable("ort", "fp32", 1, tmp_path / "lut.json"), 8, scores=scores)
    counts = greedy_counts(analysis.groups, scores, lm, 0.05, round_to=8)
    by_id = {g.id: g for g in analysis.groups}
    assert counts, "a 0.05x target must remove channels"
    for gid, n in counts.items():
        g = by_id[gid]
        assert n <= max_removable(g, 8) and (g.width - n) % 8 == 0


# -- the planner extension point --------------------------------------------------------------------------
class KeepHalf:
    """A planner removing the lower-scored half of every prunable group; records what it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, object]] = []

    def plan(self, analysis, example_inputs, importance):
        self.calls.append((len(analysis.groups), importance))
        scores = analysis.scores(importance)
        counts = {g.id: g.prunable // 2 for g in analysis.groups}
        return plan_from_counts(analysis.groups, scores, counts)


def test_prune_and_pruner_take_their_plan_from_a_planner():
    planner = KeepHalf()
    model = net(16)
    report = fxprune.prune(model, X, planner=planner, importance="l1")
    assert planner.calls and planner.calls[0][1] == "l1"
    assert [model[0].out_channels, model[3].out_channels] == [8, 8] and report.verified
    model = net(16)
    pruner = fxprune.Pruner(model, X, "l1", planner=planner)
    pruner.prune()
    assert len(planner.calls) >= 2 and callable(planner.calls[-1][1])  # the method's scores
    assert [model[0].out_channels, model[3].out_channels] == [8, 8]


def test_planner_arguments_are_checked():
    with pytest.raises(ValueError, match="not both"):
        fxprune.prune(net(), X, planner=KeepHalf(), target_flops=0.5)
    with pytest.raises(TypeError, match="plan\\(analysis"):
        fxprune.prune(net(), X, planner="latency")
    with pytest.raises(ValueError, match="not both"):
        fxprune.Pruner(net(), X, "l1", planner=KeepHalf(), target_flops=0.5)


def test_latency_planner_meets_the_estimated_budget(tmp_path):
    from fxprune.deploy import LatencyPlanner

    table = FlopTable("ort", "fp32", 1, tmp_path / "lut.json")
    planner = LatencyPlanner("0.5x", round_to=4, table=table, validate=False)
    model = net(32)
    fxprune.prune(model, X, planner=planner)
    assert planner.result is not None and planner.result.estimated_ratio <= 0.5
    widths = [model[0].out_channels, model[3].out_channels]
    assert all(w % 4 == 0 for w in widths) and sum(widths) < 64
    with pytest.raises(ValueError, match="0.5x or 12ms"):
        LatencyPlanner("half")


def test_deploy_prune_passes_through_without_a_latency_target():
    import fxprune.deploy

    model = net(16)
    report = fxprune.deploy.prune(model, X, 0.5, round_to=8, global_ranking=False)
    assert [model[0].out_channels, model[3].out_channels] == [8, 8] and report.verified
    with pytest.raises(ValueError, match="does not combine with target_flops"):
        fxprune.deploy.prune(net(16), X, target_latency="0.5x", target_flops=0.5)
