"""Ranking across groups weighted by each group's FLOPs per channel (``cost_weight``).

With ``cost_weight`` > 0 a FLOPs target is met by taking more channels from layers where a channel costs
few FLOPs (low resolution) and keeping the expensive high-resolution ones; 0 ranks by importance alone.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import fxprune
from fxprune.plan import prunable_atoms
from fxprune.regularize import Pruner
from fxprune.targets import SlimmedSize, plan_for_target, ranking_weights
from tests.helpers import resnet18_at_64


@pytest.fixture(scope="module")
def resnet18():
    return resnet18_at_64()


def _group_of(analysis, module: str):
    return next(g for g in analysis.groups if module in g.modules)


def test_weights_follow_the_flops_one_channel_costs(resnet18):
    _, x, analysis = resnet18
    size = SlimmedSize(analysis, x, "flops")
    linear = ranking_weights(analysis.groups, size, 1.0)
    assert set(linear) == {g.id for g in analysis.groups if len(prunable_atoms(g))}
    stem, deep = _group_of(analysis, "conv1"), _group_of(analysis, "layer4.0.conv1")
    # conv1 writes 32x32 maps read by 3x3 convs at 16x16; layer4.0.conv1 writes 2x2 maps
    assert linear[stem.id] > 4 * linear[deep.id]
    assert np.mean(list(linear.values())) == pytest.approx(1.0)
    root = ranking_weights(analysis.groups, size, 0.5)
    assert all(root[g] == pytest.approx(linear[g] ** 0.5) for g in linear)
    assert set(ranking_weights(analysis.groups, size, 0.0).values()) == {1.0}


def test_positive_weight_takes_the_target_from_cheap_channels(resnet18):
    model, x, analysis = resnet18
    size = SlimmedSize(analysis, x, "flops")
    cost = ranking_weights(analysis.groups, size, 1.0)
    plans = {
        w: plan_for_target(analysis, x, 0.5, importance="l1", global_ranking=True, round_to=1, cost_weight=w)
        for w in (0.0, 1.0)
    }
    for plan in plans.values():
        assert 0.45 < size(plan) / size.dense <= 0.5

    def removed_cost(plan) -> float:  # mean FLOPs-per-channel weight of the removed channels
        per_atom = [cost[gid] for gid, atoms in plan.remove.items() for _ in atoms]
        return float(np.mean(per_atom))

    plain, weighted = plans[0.0], plans[1.0]
    assert removed_cost(weighted) < 0.7 * removed_cost(plain)
    assert weighted.removed_count() > plain.removed_count()  # cheaper channels: more of them go
    stem = _group_of(analysis, "conv1").id
    assert len(weighted.remove.get(stem, ())) < len(plain.remove.get(stem, ()))
    # the one-call form gives a verified slim model at the target
    slim = copy.deepcopy(model)
    report = fxprune.prune(
        slim, x, importance="l1", target_flops=0.5, global_ranking=True, round_to=1, cost_weight=1.0
    )
    assert report.exact_error is not None and report.exact_error < 1e-4
    assert report.flops_after <= 0.5 * report.flops_before
    assert report.params_after > 0


def test_cost_weight_is_refused_where_it_does_not_apply(resnet18):
    model, x, analysis = resnet18
    with pytest.raises(ValueError, match="needs target_flops"):
        plan_for_target(analysis, x, 0.5, cost_weight=0.5)
    with pytest.raises(ValueError, match="needs target_flops"):
        fxprune.prune(copy.deepcopy(model), x, ratio=0.5, global_ranking=True, cost_weight=0.5)
    with pytest.raises(ValueError, match="needs target_flops"):
        Pruner(copy.deepcopy(model), x, "l1", 0.5, global_ranking=True, cost_weight=0.5)
    with pytest.raises(ValueError, match="cost_weight is a number"):
        fxprune.prune(copy.deepcopy(model), x, target_flops=0.5, global_ranking=True, cost_weight="0.5")


def test_cli_refuses_cost_weight_without_a_target(capsys):
    from fxprune.cli import main

    assert main(["prune", "cifar_resnet20", "--global", "--cost-weight", "0.5", "--no-latency"]) == 2
    assert "--cost-weight applies to --target-flops/--target-params" in capsys.readouterr().err


def test_yolo_option_resolves_and_reaches_the_plan(single_thread):
    pytest.importorskip("ultralytics")
    from fxprune.integrations.ultralytics import PruningOptions
    from fxprune.integrations.ultralytics.engine import make_pruner
    from fxprune.integrations.ultralytics.interface import example_input
    from fxprune.integrations.ultralytics.options import DEFAULT_COST_WEIGHT
    from ultralytics import YOLO

    assert PruningOptions(method="l1", target_flops=0.5).cost_weight == DEFAULT_COST_WEIGHT
    assert PruningOptions(method="l1", ratio=0.5).cost_weight == 0.0
    with pytest.raises(ValueError, match="needs target_flops"):
        PruningOptions(method="l1", ratio=0.5, cost_weight=0.25)
    with pytest.raises(ValueError, match="cost_weight is a number"):
        PruningOptions(method="l1", target_flops=0.5, cost_weight="high")
    kept, removed = {}, {}
    p3, p5 = "model.15.cv2.conv", "model.21.cv2.conv"  # neck outputs at strides 8 and 32
    for w in (0.0, 0.5):
        model = YOLO("yolov8n.yaml").model.float()
        options = PruningOptions(method="l1", target_flops=0.5, round_to=8, cost_weight=w)
        pruner = make_pruner(model, example_input(model, 64), options)
        pruner.prune()
        kept[w] = {m: model.get_submodule(m).out_channels for m in (p3, p5)}
        removed[w] = pruner.plan.removed_count()
    assert kept[0.5][p3] > kept[0.0][p3] and kept[0.5][p5] < kept[0.0][p5]
    assert removed[0.5] > removed[0.0]  # the cheap low-resolution channels go in larger numbers
