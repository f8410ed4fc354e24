"""Aligned FLOPs/params targets are filled up to the target, and every layer's width stays aligned.

A bisection over one ratio lands far below the target when widths are multiples of 16 or 32 (a small
ratio step drops a whole block in every layer); the fill-up gives blocks back while the count stays at
or below the target. Groups holding several layers (the inputs of a concatenation, the halves of a
split) keep every layer's width a multiple of ``round_to``.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

import fxprune
from fxprune.plan import Plan, chunk_size, fill_up
from fxprune.targets import SlimmedSize, plan_for_target
from tests.helpers import randomize_, resnet18_at_64


def _conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def _unaligned(dense: dict[str, int], pruned: dict[str, int], round_to: int) -> list[tuple[str, int]]:
    return [(n, w) for n, w in pruned.items() if w != dense[n] and w % round_to]


@pytest.fixture(scope="module")
def resnet18():
    return resnet18_at_64()


@pytest.mark.parametrize("metric", ["flops", "params"])
@pytest.mark.parametrize("round_to", [16, 32])
def test_aligned_target_lands_within_one_block_below_it(resnet18, round_to, metric):
    _, x, analysis = resnet18
    size = SlimmedSize(analysis, x, metric)
    fraction = lambda plan: size(plan) / size.dense  # noqa: E731
    start = time.perf_counter()
    plan = plan_for_target(analysis, x, 0.5, metric, importance="l1", round_to=round_to)
    seconds = time.perf_counter() - start
    bisected = plan_for_target(analysis, x, 0.5, metric, importance="l1", round_to=round_to, fill=False)
    assert fraction(bisected) <= fraction(plan) <= 0.5
    # within one block: giving any group one more block back would cross the target
    by_id = {g.id: g for g in analysis.groups}
    for gid, removed in plan.remove.items():
        q = chunk_size(by_id[gid], round_to)
        fewer = dict(plan.remove)
        fewer[gid] = removed[: max(0, len(removed) - q)]
        assert fraction(Plan(fewer)) > 0.5, (gid, len(removed), q)
    # filling again finds nothing more to give back
    again = fill_up(analysis.groups, analysis.scores("l1"), plan, fraction, 0.5, round_to=round_to)
    assert {k: v.tolist() for k, v in again.remove.items()} == {k: v.tolist() for k, v in plan.remove.items()}
    assert seconds < 5.0


def test_prune_with_target_flops_is_filled_aligned_and_verified():
    torch.manual_seed(1)
    model = randomize_(tvm.resnet18(num_classes=10).eval())
    dense = _conv_widths(model)
    x = torch.randn(1, 3, 64, 64)
    report = fxprune.prune(model, x, target_flops=0.5, round_to=32, importance="l1")
    assert 0.45 < report.flops_after / report.flops_before <= 0.5
    assert report.exact_error is not None and report.exact_error < 1e-4
    assert not _unaligned(dense, _conv_widths(model), 32)
    assert report.flops_after == fxprune.measure.count_flops(model, x)


def test_groups_with_their_own_ratio_are_not_filled(resnet18):
    _, x, analysis = resnet18
    ratios = {"layer4.*": 0.75}
    plan = plan_for_target(analysis, x, 0.6, "flops", importance="l1", round_to=16, ratios=ratios)
    fixed = analysis.plan(0.0, importance="l1", ratios=ratios, round_to=16)
    for gid, removed in fixed.remove.items():
        assert plan.remove[gid].tolist() == removed.tolist()


class Concat(nn.Module):
    """Two convolutions concatenated and read by one: their channels share a group."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 32, 3, padding=1), nn.Conv2d(3, 48, 3, padding=1)
        self.c = nn.Conv2d(80, 8, 1)

    def forward(self, x):
        return self.c(torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1))


def test_each_input_of_a_concatenation_keeps_an_aligned_share():
    torch.manual_seed(0)
    model = Concat().eval()
    with torch.no_grad():
        model.b.weight.mul_(1e-3)  # ranked together, every channel of b would go first
    x = torch.randn(1, 3, 16, 16)
    report = fxprune.prune(model, x, 0.5, round_to=16, importance="l1")
    assert (model.a.out_channels, model.b.out_channels) == (16, 32)
    assert report.exact_error < 1e-4


def test_yolov8n_target_flops_lands_at_the_target_with_aligned_widths():
    pytest.importorskip("ultralytics")
    from fxprune.integrations.ultralytics import yolo_interface
    from ultralytics.nn.tasks import DetectionModel

    torch.manual_seed(0)
    model = DetectionModel("yolov8n.yaml", verbose=False).eval()
    dense = _conv_widths(model)
    x = torch.randn(1, 3, 64, 64)
    analysis = fxprune.analyze(model, x, outputs=yolo_interface)
    size = SlimmedSize(analysis, x, "flops")
    bisected = plan_for_target(analysis, x, 0.5, "flops", importance="l1", round_to=16, fill=False)
    start = time.perf_counter()
    plan = plan_for_target(analysis, x, 0.5, "flops", importance="l1", round_to=16)
    seconds = time.perf_counter() - start
    assert size(bisected) / size.dense < 0.45  # the jump the fill-up closes
    assert 0.48 < size(plan) / size.dense <= 0.5 and seconds < 5.0
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.exact_error < 1e-3
    widths = _conv_widths(model)
    assert not _unaligned(dense, widths, 16)
    assert min(w for n, w in widths.items() if w != dense[n]) >= 16  # no layer collapses to a few channels
    assert np.isclose(report.flops_after / report.flops_before, size(plan) / size.dense, rtol=1e-6)
