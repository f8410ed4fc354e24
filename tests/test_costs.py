"""FLOPs and parameters of a plan counted from the analysis equal the slimmed model's, counted for real.

The cost table is recorded once during the shape-only analysis; every plan is then counted without
slimming a copy. These tests slim real copies and count them with torch's FLOP counter to check it.
"""

from __future__ import annotations

import importlib

import pytest
import torch
import torch.nn.functional as F
import torchvision.models as tvm
from torch import nn

import fxprune
from fxprune.measure import count_flops, count_params
from fxprune.targets import PlanCosts, plan_for_target, slimmed_copy
from tests.helpers import randomize_
from tests.test_prune_speed_units import TinyTransformer


class Heads(nn.Module):
    """Attention written out: a packed projection split into heads by reshapes, sdpa, a merge back."""

    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.heads = heads
        self.stem = nn.Conv2d(3, d, 4, 4)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2, self.head = nn.Linear(d, 4 * d), nn.Linear(4 * d, d), nn.Linear(d, 10)

    def forward(self, x):
        x = self.stem(x).flatten(2).transpose(1, 2)
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c)
        x = x + self.proj(y)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


MODELS = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), (1, 3, 64, 64)),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), (1, 3, 64, 64)),
    "shufflenet_v2_x0_5": (lambda: tvm.shufflenet_v2_x0_5(num_classes=10), (1, 3, 64, 64)),
    "multihead_attention": (TinyTransformer, (2, 3, 16, 16)),
    "reshaped_heads": (Heads, (2, 3, 16, 16)),
    # windows padded to the window size in the late stages, cosine attention normalized over the head size
    "swin_v2_t": (lambda: tvm.swin_v2_t(num_classes=10), (1, 3, 64, 64)),
}


def _setup(name: str, ratio: float):
    build, shape = MODELS[name]
    torch.manual_seed(0)
    model = build().eval()
    randomize_(model)
    x = torch.randn(shape)
    analysis = fxprune.analyze(model, x)
    return model, x, analysis, analysis.plan(ratio, round_to=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_plan_costs_equal_counts_of_the_slimmed_model(name):
    model, x, analysis, plan = _setup(name, 0.4)
    costs = PlanCosts(analysis)
    assert costs.exact and plan.removed_count() > 0
    slim = slimmed_copy(analysis, plan)
    assert costs.flops(fxprune.Plan()) == count_flops(model, x)
    assert costs.params(fxprune.Plan()) == count_params(model)
    assert costs.flops(plan) == count_flops(slim, x) < count_flops(model, x)
    assert costs.params(plan) == count_params(slim) < count_params(model)


def test_report_figures_come_from_the_costs_without_counting_passes(monkeypatch):
    model, x, analysis, plan = _setup("reshaped_heads", 0.5)
    prune_module = importlib.import_module("fxprune.prune")

    def no_counter():
        raise AssertionError("a verification pass was counted")

    monkeypatch.setattr(prune_module, "flop_counter", no_counter)
    dense = count_flops(model, x)
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.verified and report.flops_before == dense and report.flops_after == count_flops(model, x)


def test_target_planning_counts_no_slimmed_copy(monkeypatch):
    model, x, analysis, _ = _setup("resnet18", 0.5)
    targets = importlib.import_module("fxprune.targets")

    def no_slimming(*args, **kwargs):
        raise AssertionError("a candidate was slimmed")

    monkeypatch.setattr(targets, "slim_model", no_slimming)
    plan = plan_for_target(analysis, x, 0.4, "flops", round_to=1)
    params_plan = plan_for_target(analysis, x, 0.4, "params", round_to=1)
    monkeypatch.undo()
    dense = count_flops(model, x)
    kept = count_flops(slimmed_copy(analysis, plan), x) / dense
    assert 0.35 <= kept <= 0.4
    kept_params = count_params(slimmed_copy(analysis, params_plan)) / count_params(model)
    assert 0.33 <= kept_params <= 0.4


def test_inputs_of_another_size_than_the_analysis_are_counted_on_the_passes():
    model, _, analysis, plan = _setup("resnet18", 0.5)
    x = torch.randn(1, 3, 48, 48)  # the cost table was recorded at 64x64
    assert not PlanCosts(analysis).fits(x)
    dense = count_flops(model, x)
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.verified and report.flops_before == dense and report.flops_after == count_flops(model, x)


class CopiesToCpu(nn.Module):
    """Copies to the CPU in forward: the meta-device analysis cannot run it (fake tensors can)."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(self.a(x).relu().cpu())


def test_without_a_cost_table_figures_are_counted_on_the_passes():
    model = CopiesToCpu().eval()
    x = torch.randn(1, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    assert not PlanCosts(analysis).exact
    dense = count_flops(model, x)
    report = fxprune.apply_plan(analysis, analysis.plan(0.5, round_to=1), x)
    assert report.verified and report.flops_before == dense and report.flops_after == count_flops(model, x)
    assert model.a.out_channels == 8


def test_cost_table_follows_reshapes_of_channel_dims():
    from fxprune.groups.cost_views import reshape_dims

    # [B, S, E] -> [B, S, H, D]: E's factor moves onto D; [B, C, H, W] -> [B, C*H*W] merges C's factor
    assert reshape_dims((2, 5, 12), [(), (), (0,)], (2, 5, 3, 4)) == [(), (), (), (0,)]
    assert reshape_dims((2, 6, 3, 3), [(), (1,), (), ()], (2, 54)) == [(), (1,)]
    assert reshape_dims((2, 6), [(), None], (12,)) == [None]
    assert reshape_dims((1, 4), [(), (2,)], (4, 1)) == [(2,), ()]
