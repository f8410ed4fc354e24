"""Shape-only analysis shortcuts: convolution results computed from shapes, kept channels from lookups.

The meta-tensor pass computes a plain convolution layer's result shape itself and notes the op in the cost
table as the convolution would have been; these tests compare that table with torch's FLOP counter on
really slimmed copies, for the convolution settings the shortcut handles and those it leaves to torch.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
import fxprune.groups.propagate as propagate
from fxprune.measure import count_flops
from fxprune.slim.slim import _kept_positions
from fxprune.targets import PlanCosts, slimmed_copy


class Convs(nn.Module):
    """1-D, 2-D and 3-D convolutions: strides, dilation, padding, groups, no bias, padding="same"."""

    def __init__(self) -> None:
        super().__init__()
        self.c2 = nn.Sequential(
            nn.Conv2d(3, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=2, dilation=2, groups=4, bias=False), nn.ReLU(),
            nn.Conv2d(16, 16, 3, padding=1, groups=16), nn.ReLU(),
            nn.Conv2d(16, 24, (3, 1), stride=(1, 2), padding=(1, 0)), nn.ReLU(),
            nn.Conv2d(24, 24, 3, padding="same"), nn.ReLU(),
        )
        self.c1 = nn.Sequential(nn.Conv1d(24, 12, 3, stride=2), nn.ReLU(), nn.Conv1d(12, 8, 1))
        self.c3 = nn.Sequential(nn.Conv3d(1, 6, 3, padding=1), nn.ReLU(), nn.Conv3d(6, 4, 1))
        self.head = nn.Linear(8 + 4, 5)

    def forward(self, x):
        y = self.c2(x)
        a = self.c1(y.mean(3)).mean(2)
        b = self.c3(y.mean(1, keepdim=True).unsqueeze(1)).flatten(2).mean(2)
        return self.head(torch.cat([a, b], 1))


@pytest.mark.parametrize("shortcut", [True, False])
def test_conv_shortcut_costs_match_torch_counter(shortcut: bool, monkeypatch) -> None:
    if not shortcut:
        monkeypatch.setattr(propagate, "conv_like", lambda m, x, recorder: None)
    torch.manual_seed(0)
    model, x = Convs().eval(), torch.randn(1, 3, 20, 20)
    analysis = fxprune.analyze(model, x)
    costs = analysis.propagation.costs
    assert costs.exact
    plan = analysis.plan(0.5, round_to=1)
    assert plan.remove
    table = PlanCosts(analysis)
    assert table.flops(fxprune.plan.Plan()) == count_flops(model, x)
    assert table.flops(plan) == count_flops(slimmed_copy(analysis, plan), x)


def test_conv_shortcut_taken_and_same_table_as_torch_meta_kernels(monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = Convs().eval(), torch.randn(1, 3, 20, 20)
    taken = []
    real = propagate.conv_like
    monkeypatch.setattr(propagate, "conv_like", lambda m, t, r: taken.append(real(m, t, r)) or taken[-1])
    fast = fxprune.analyze(model, x).propagation.costs
    assert sum(t is not None for t in taken) >= 5 and any(t is None for t in taken)  # padding="same"
    monkeypatch.setattr(propagate, "conv_like", lambda m, t, r: None)
    slow = fxprune.analyze(model, x).propagation.costs
    assert [(e.op, e.dense, repr(e.args), repr(e.out)) for e in fast.entries] == [
        (e.op, e.dense, repr(e.args), repr(e.out)) for e in slow.entries
    ]


def test_kept_positions_equal_isin() -> None:
    rng = np.random.default_rng(0)
    for _ in range(500):
        width = int(rng.integers(1, 30))
        idx = rng.integers(-1, width, size=int(rng.integers(0, 40)))
        removed = rng.choice(width, size=int(rng.integers(1, width + 1)), replace=False)
        expected = np.nonzero(~np.isin(idx, removed))[0]
        np.testing.assert_array_equal(_kept_positions(idx, removed, width), expected)
    idx = np.array([0, 7, 2])  # an index outside the group's width falls back to isin
    np.testing.assert_array_equal(_kept_positions(idx, np.array([2]), 3), [0, 1])


class Factory(nn.Module):
    """A forward that makes tensors without a device (they must be meta tensors on the meta pass)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.head = nn.Linear(8, 4)

    def forward(self, x):
        y = self.conv(x)
        pad = torch.zeros(x.shape[0], 2, y.shape[2], y.shape[3])  # sizes read from the input: traced
        return self.head(torch.cat([y, pad], 1).mean((2, 3))[:, :8])


def test_factory_calls_in_the_model_make_meta_tensors_on_the_meta_pass() -> None:
    torch.manual_seed(0)
    model, x = Factory().eval(), torch.randn(1, 3, 12, 12)
    analysis = fxprune.analyze(model, x)
    assert analysis.propagation.costs is not None  # the meta pass ran (the fallbacks record no costs)
    report = fxprune.prune(model, x, 0.5, round_to=1)
    assert report.exact_error is not None  # verified (the constants freeze those channels)


class Linears(nn.Module):
    """Linear layers on batches of vectors (with and without bias) and on a 3-D input (left to torch)."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(12, 16)
        self.b = nn.Linear(16, 16, bias=False)
        self.c = nn.Linear(16, 10)
        self.d = nn.Linear(12, 8)
        self.e = nn.Linear(8, 5)

    def forward(self, x):
        y = self.c(self.b(self.a(x).relu()).relu())
        z = self.e(self.d(x.unsqueeze(1).expand(-1, 3, -1)).relu()).mean(1)
        return y, z


def test_linear_shortcut_taken_and_same_table_as_torch_meta_kernels(monkeypatch) -> None:
    torch.manual_seed(0)
    model, x = Linears().eval(), torch.randn(4, 12)
    taken = []
    real = propagate.linear_like
    monkeypatch.setattr(propagate, "linear_like", lambda m, t, r: taken.append(real(m, t, r)) or taken[-1])
    analysis = fxprune.analyze(model, x)
    fast = analysis.propagation.costs
    assert sum(t is not None for t in taken) == 3 and sum(t is None for t in taken) == 2  # the 3-D input
    monkeypatch.setattr(propagate, "linear_like", lambda m, t, r: None)
    slow = fxprune.analyze(model, x).propagation.costs
    assert [(e.op, e.dense, repr(e.args), repr(e.kwargs), repr(e.out)) for e in fast.entries] == [
        (e.op, e.dense, repr(e.args), repr(e.kwargs), repr(e.out)) for e in slow.entries
    ]
    assert [repr(f) for f in fast.factors] == [repr(f) for f in slow.factors] and fast.exact == slow.exact
    plan = analysis.plan(0.5, round_to=1)
    assert plan.remove
    table = PlanCosts(analysis)
    assert table.flops(fxprune.plan.Plan()) == count_flops(model, x)
    assert table.flops(plan) == count_flops(slimmed_copy(analysis, plan), x)
