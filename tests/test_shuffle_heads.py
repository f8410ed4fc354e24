"""Channel shuffles followed as permutations (ShuffleNetV2 units lose channels), and attention head
sizes written as expressions of module attributes."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torchvision import models as tvm

import fxprune
from fxprune.groups.channel_order import channel_orders
from fxprune.groups.shuffle_quotas import choose_with_quotas
from fxprune.slim import slim_model
from tests.helpers import check_pruned, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")


def cbr(cin: int, cout: int, k: int = 1, g: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, 1, k // 2, groups=g, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


def shuffle_view(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = torch.transpose(x.view(b, groups, c // groups, h, w), 1, 2).contiguous()
    return x.view(b, -1, h, w)


class Unit(nn.Module):
    """ShuffleNetV2's stride-1 unit: half the channels pass through, the shuffle interleaves them."""

    def __init__(self, c: int, residual: bool = False):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(cbr(h, h), cbr(h, h, 3, g=h), cbr(h, h))
        self.residual = residual

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        y = shuffle_view(torch.cat((x1, self.branch(x2)), dim=1), 2)
        return y + x if self.residual else y  # an add after the shuffle: its order is not followed


class Net(nn.Module):
    def __init__(self, c: int = 32, units: int = 4, residual: bool = False):
        super().__init__()
        self.stem = cbr(3, c, 3)
        self.units = nn.Sequential(*[Unit(c, residual) for _ in range(units)])
        self.head = nn.Conv2d(c, 10, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x))).mean((2, 3))


def _prepared(model: nn.Module) -> nn.Module:
    return randomize_(model, seed=0).eval()


def test_units_lose_channels_through_the_shuffle_chain():
    model = _prepared(Net(units=4))
    res = check_pruned(model, torch.randn(2, 3, 16, 16), 0.5, min_flops_ratio=2.3, round_to=1)
    assert res.report.flops_after / res.report.flops_before < 0.43  # 0.69 when the whole trunk froze
    assert model.stem[0].out_channels == 16
    for unit in model.units:
        assert unit.branch[-1][0].out_channels == 8 == unit.branch[0][0].in_channels


def test_torchvision_shufflenet_v2_is_pruned_below_the_frozen_trunk():
    model = randomize_(tvm.shufflenet_v2_x0_5(), seed=1).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    res = check_pruned(model, x, 0.5, min_flops_ratio=2.5, round_to=1)
    assert res.report.flops_after / res.report.flops_before < 0.38  # 0.52 before, measured 0.345
    dense = tvm.shufflenet_v2_x0_5()
    for name in ("stage2", "stage3", "stage4"):
        stage, c = getattr(model, name), getattr(dense, name)[1].branch2[5].out_channels
        widths = {unit.branch2[5].out_channels for unit in stage} | {stage[0].branch1[2].out_channels}
        assert len(widths) == 1  # every unit of a stage keeps the same count (the rows of each shuffle)
        assert widths.pop() <= c // 2 + 1


def test_shuffled_layers_read_their_inputs_in_the_slim_order():
    model = _prepared(Net(units=3))
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5, round_to=1)
    gm = analysis.captured.graph_module
    orders = channel_orders(analysis.propagation, gm, analysis.groups, plan.remove)
    assert "units.1.branch.0.0.weight" in {name for name, _ in orders}
    assert any(np.any(np.diff(o) < 0) for o in orders.values())  # some layer reads out of ascending order
    # the same plan slimmed with every layer reading in ascending order computes something else
    ordered, ascending = copy.deepcopy(model), copy.deepcopy(model)
    slim_model(ordered, analysis.groups, plan, analysis.constants, orders)
    slim_model(ascending, analysis.groups, plan, analysis.constants)
    with torch.no_grad():
        assert not torch.allclose(ordered(x), ascending(x), atol=1e-4)


def test_a_shuffle_whose_order_cannot_be_followed_keeps_positions_tied():
    model = _prepared(Net(units=2, residual=True))
    analysis = fxprune.analyze(copy.deepcopy(model), torch.randn(2, 3, 16, 16))
    assert not [c for c in analysis.propagation.constraints if c[0] == "channel_permutation"]
    assert all(g.chooser is None for g in analysis.groups)
    check_pruned(model, torch.randn(2, 3, 16, 16), 0.5, min_flops_ratio=1.2, round_to=1)


class _Group:
    def __init__(self, frozen=()):
        self.frozen = {i: "kept" for i in frozen}


def _kept(group, scores, n_remove, atoms, counts) -> list[int]:
    removed = choose_with_quotas(group, scores, n_remove, atoms, counts, ref=8)
    return sorted(set(range(8)) - set(removed.tolist()))


def test_quotas_keep_the_best_channels_of_each_range():
    scores = np.array([5.0, 0.1, 4.0, 3.0, 0.2, 9.0, 8.0, 0.3])
    atoms = [np.arange(8), np.arange(4), np.arange(2)]
    counts = [lambda k: k, lambda k: k // 2, lambda k: k // 4]
    # k = 4: 1 of [0, 2), 2 of [0, 4), 4 in all, the best of each range (not simply the best four)
    assert _kept(_Group(), scores, 4, atoms, counts) == [0, 2, 5, 6]
    assert _kept(_Group(frozen=[1]), scores, 4, atoms, counts) == [1, 2, 5, 6]  # the frozen one fills [0, 2)
    counts[2] = lambda k: 3  # more than [0, 2) holds: no width below 8 works, nothing is removed
    assert _kept(_Group(), scores, 4, atoms, counts) == list(range(8))


@pytest.mark.parametrize("functional", [False, True], ids=["nn.ChannelShuffle", "F.channel_shuffle"])
def test_channel_shuffle_op_is_followed(functional):
    class Op(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b, self.shuffle, self.out = cbr(3, 16), cbr(3, 16), nn.ChannelShuffle(2), cbr(32, 8)

        def forward(self, x):
            y = torch.cat((self.a(x), self.b(x)), 1)
            return self.out(F.channel_shuffle(y, 2) if functional else self.shuffle(y)).mean((2, 3))

    model = _prepared(Op())
    res = check_pruned(model, torch.randn(2, 3, 8, 8), 0.5, min_flops_ratio=1.5, round_to=1)
    assert res.report.exact_error < 1e-4
    assert model.a[0].out_channels == model.b[0].out_channels == 8


# ---------------------------------------------------------------- head sizes written as attribute sums
class SumView(nn.Module):
    """A per-head width written as ``self.a * 2 + self.b`` that no other op ties to ``a`` and ``b``."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.heads = 8, 16, 2
        self.stem, self.qkv, self.out = cbr(3, 16), nn.Conv2d(16, 64, 1), nn.Conv2d(64, 8, 1)

    def forward(self, x):
        y = self.qkv(self.stem(x))
        b, _, h, w = y.shape
        y = y.view(b, self.heads, self.a * 2 + self.b, h * w).relu()
        return self.out(y.reshape(b, -1, h, w)).mean((2, 3))


def test_a_sum_of_attributes_nothing_else_sizes_stays_frozen():
    model = _prepared(SumView())
    x = torch.randn(2, 3, 8, 8)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    reasons = [u.reason for u in analysis.unsupported]
    assert reasons == ["size 2*a + b not followed by the pieces its attributes size"]
    check_pruned(model, x, 0.5, min_flops_ratio=1.05, round_to=1)
    assert model.qkv.out_channels == 64 and (model.a, model.b) == (8, 16)
    assert model.stem[0].out_channels < 16


def _ultralytics_block(name: str):
    block = pytest.importorskip("ultralytics.nn.modules.block")
    return getattr(block, name)


def test_psa_key_and_value_dims_are_pruned_with_one_head():
    c2psa = _ultralytics_block("C2PSA")
    model = randomize_(c2psa(128, 128, 1), seed=0).eval()  # c = 64: one head of 64, key_dim 32
    check_pruned(model, torch.randn(2, 128, 8, 8), 0.5, min_flops_ratio=2.0, round_to=1)
    attn = model.m[0].attn
    assert attn.num_heads == 1 and attn.key_dim < 32 and attn.head_dim < 64
    assert attn.qkv.conv.out_channels == attn.num_heads * (2 * attn.key_dim + attn.head_dim)
    assert attn.head_dim == model.c  # v's channels are the residual stream of the block


def test_psa_with_two_heads_prunes_key_and_value_dims():
    c2psa = _ultralytics_block("C2PSA")
    model = randomize_(c2psa(256, 256, 1), seed=0).eval()  # yolo11n's block: 2 heads of 64, key_dim 32
    check_pruned(model, torch.randn(2, 256, 8, 8), 0.5, min_flops_ratio=2.0, round_to=1)
    attn = model.m[0].attn
    assert attn.key_dim < 32 and attn.head_dim < 64
    assert attn.qkv.conv.out_channels == 2 * (2 * attn.key_dim + attn.head_dim)
    # the head view ties v's position d in both heads: the residual half loses channels in pairs, the
    # other half of C2PSA's split((c, c)) as many single channels
    assert model.c == 2 * attn.head_dim == model.cv1.conv.out_channels // 2


def test_attribute_sum_is_read_from_forward():
    attention = _ultralytics_block("Attention")
    from fxprune.groups.attr_expressions import find_expression
    from fxprune.groups.context import OpContext

    m = attention(128, 2)
    ctx = OpContext(None, (), {}, (), {}, None, None, m, module_name="", model=m)
    assert find_expression(ctx, 2 * m.key_dim + m.head_dim) == {"key_dim": 2, "head_dim": 1}
    assert find_expression(ctx, 129) is None
