"""Channels that used to freeze although the structure allows pruning, each on a small block."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from tests.helpers import check_pruned, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")


def cbr(cin: int, cout: int, k: int = 3, g: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, 1, k // 2, groups=g, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


# ---------------------------------------------------------------- sizes read from module attributes
class MixedDepthwise(nn.Module):
    """timm's MixedConv2d: ``torch.split(x, self.splits, 1)``, one depthwise conv per piece, concat."""

    def __init__(self, splits=(16, 8, 8)):
        super().__init__()
        self.splits = list(splits)
        self.convs = nn.ModuleList(cbr(s, s, 3 + 2 * i, g=s) for i, s in enumerate(splits))

    def forward(self, x):
        pieces = torch.split(x, self.splits, 1)
        return torch.cat([c(p) for c, p in zip(self.convs, pieces)], 1)


class MixNetLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.pw = cbr(3, 16), cbr(16, 32, 1)
        self.mix = MixedDepthwise()
        self.out = nn.Conv2d(32, 10, 1)

    def forward(self, x):
        return self.out(self.mix(self.pw(self.stem(x))))


class Res2NetLike(nn.Module):
    """Res2Net: ``torch.split(out, self.width, 1)`` and a hierarchy of convs over the pieces."""

    def __init__(self, width: int = 8, scale: int = 4):
        super().__init__()
        self.width, self.scale = width, scale
        self.stem, self.conv1 = cbr(3, 16), cbr(16, width * scale, 1)
        self.convs = nn.ModuleList(cbr(width, width) for _ in range(scale - 1))
        self.conv3 = nn.Conv2d(width * scale, 16, 1)

    def forward(self, x):
        x = self.stem(x)
        spx = torch.split(self.conv1(x), self.width, 1)
        outs, sp = [], spx[0]
        for i, conv in enumerate(self.convs):
            sp = conv(sp if i == 0 else sp + spx[i])
            outs.append(sp)
        outs.append(spx[-1])
        return x + self.conv3(torch.cat(outs, 1))


class GhostLike(nn.Module):
    """GhostNet: a cheap depthwise copy concatenated, then ``out[:, :self.out_chs]``."""

    def __init__(self, out_chs: int = 28):
        super().__init__()
        self.out_chs = out_chs
        init = (out_chs + 1) // 2
        self.stem = cbr(3, 16)
        self.primary, self.cheap = cbr(16, init, 1), cbr(init, init, 3, g=init)
        self.head = nn.Conv2d(out_chs, 10, 1)

    def forward(self, x):
        x1 = self.primary(self.stem(x))
        out = torch.cat([x1, self.cheap(x1)], 1)
        return self.head(out[:, : self.out_chs, :, :])


class TwoWaySplit(nn.Module):
    """Ultralytics' C2PSA: ``cv1(x).split((self.c, self.c), dim=1)``, one half transformed."""

    def __init__(self, c1: int = 32):
        super().__init__()
        self.c = c1 // 2
        self.stem, self.cv1 = cbr(3, c1), cbr(c1, 2 * self.c, 1)
        self.m = nn.Sequential(cbr(self.c, self.c), cbr(self.c, self.c))
        self.cv2 = nn.Conv2d(2 * self.c, 10, 1)

    def forward(self, x):
        a, b = self.cv1(self.stem(x)).split((self.c, self.c), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


class DualPathLike(nn.Module):
    """DPN: one conv's output cut at ``self.num_1x1_c`` into a residual part and a dense part."""

    def __init__(self, num_1x1_c: int = 24, inc: int = 8):
        super().__init__()
        self.num_1x1_c = num_1x1_c
        self.stem, self.conv = cbr(3, num_1x1_c), cbr(num_1x1_c, num_1x1_c + inc, 1)
        self.head = nn.Conv2d(num_1x1_c + inc + num_1x1_c, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(x)
        resid = x + y[:, : self.num_1x1_c]
        return self.head(torch.cat([resid, y[:, self.num_1x1_c :], resid], 1))


class SharedSplitSize(nn.Module):
    """Two branches split with one ``self.key_dim`` (cascaded heads): the widths must not drift apart."""

    def __init__(self, key_dim: int = 8):
        super().__init__()
        self.key_dim = key_dim
        self.stem = cbr(3, 16)
        self.heads = nn.ModuleList(cbr(16, 2 * key_dim, 1) for _ in range(2))
        self.out = nn.Conv2d(4 * key_dim, 10, 1)

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for head in self.heads:
            q, k = head(x).split([self.key_dim, self.key_dim], dim=1)
            outs += [q, k * 2]
        return self.out(torch.cat(outs, 1))


class AmbiguousSplit(TwoWaySplit):
    """Two attributes hold the split size: the analysis cannot tell which one forward used."""

    def __init__(self):
        super().__init__()
        self.c2 = self.c

    def forward(self, x):
        a, b = self.cv1(self.stem(x)).split((self.c, self.c2), dim=1)
        return self.cv2(torch.cat((a, self.m(b)), 1))


def _width(report, module: str) -> tuple[int, int]:
    return next((b, a) for _, first, b, a in report.widths if first == module)


def _prune(model: nn.Module, x: torch.Tensor, **kw):
    randomize_(model, 0).eval()
    return check_pruned(model, x, 0.5, **kw).report


def test_split_sizes_from_a_list_attribute_follow_the_pieces():
    model = MixNetLike()
    report = _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.5)
    assert _width(report, "pw.0")[1] < 32
    sizes = model.mix.splits
    assert isinstance(sizes, list) and sum(sizes) == model.pw[0].out_channels
    assert sizes == [c[0].out_channels for c in model.mix.convs]
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10, 16, 16)


def test_split_size_from_an_int_attribute_keeps_the_pieces_equal():
    model = Res2NetLike()  # 8-channel pieces: any width (round_to=1), so that they can shrink at all
    _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.4, round_to=1)
    assert model.width < 8
    assert model.conv1[0].out_channels == model.width * model.scale
    # the convs whose output meets the next piece follow it; the last one is free
    assert all(c[0].out_channels == model.width for c in model.convs[:-1])


@pytest.mark.parametrize("out_chs", [27, 28])
def test_slice_bound_from_an_attribute_follows_the_kept_channels(out_chs):
    model = GhostLike(out_chs)
    _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.4)
    assert model.primary[0].out_channels < 14
    assert model.out_chs == model.head.in_channels < out_chs


def test_slice_start_and_stop_from_one_attribute():
    model = DualPathLike()  # an 8-channel dense part: any width (round_to=1), so that it can shrink at all
    _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.3, round_to=1)
    assert model.num_1x1_c == model.stem[0].out_channels < 24
    assert model.conv[0].out_channels - model.num_1x1_c < 8


def test_tuple_of_one_attribute_splits_into_equal_halves():
    model = TwoWaySplit()
    _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.5)
    assert model.c < 16 and model.cv1[0].out_channels == 2 * model.c


def test_a_size_two_attributes_could_explain_is_read_from_the_split_list():
    model = AmbiguousSplit()
    x = torch.randn(1, 3, 16, 16)
    _prune(model, x, min_flops_ratio=1.1)
    assert model.cv1[0].out_channels == model.c + model.c2 < 32


# ---------------------------------------------------------------- weights transformed in forward
class StdConv(nn.Conv2d):
    """A weight-standardized conv (as timm's ScaledStdConv2d): each filter normalized, then a gain."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gain = nn.Parameter(torch.ones(self.out_channels, 1, 1, 1))

    def forward(self, x):
        w = nn.functional.batch_norm(
            self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0, eps=1e-6
        ).reshape_as(self.weight)
        return nn.functional.conv2d(x, w * self.gain, self.bias, self.stride, self.padding)


class StdConvNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.c2 = StdConv(3, 24, 3, padding=1), StdConv(24, 40, 3, padding=1)
        self.c3 = StdConv(40, 10, 1)

    def forward(self, x):
        return self.c3(torch.relu(self.c2(torch.relu(self.c1(x)))))


def test_weight_standardized_convs_are_pruned_by_what_forward_does():
    model = StdConvNet()
    x = torch.randn(1, 3, 16, 16)
    analysis = fxprune.analyze(randomize_(model, 0).eval(), x)
    assert not analysis.unsupported
    assert sum(g.prunable for g in analysis.groups) == 24 + 40
    # removing input channels changes each filter's statistics: those groups are approximate
    assert all(g.approx_reason for g in analysis.groups if g.prunable)
    report = check_pruned(model, x, 0.5, min_flops_ratio=1.5, max_exact_error=1e-4, check_zeroed=False).report
    assert model.c1.out_channels == model.c2.in_channels < 24
    assert model.c1.weight.shape[0] == model.c1.out_channels
    assert model.c2.gain.shape[0] == model.c2.out_channels < 40
    assert report.approx_groups


def test_one_attribute_sizing_channels_of_several_ops_freezes_them():
    model = SharedSplitSize()
    _prune(model, torch.randn(1, 3, 16, 16), min_flops_ratio=1.05)
    assert model.key_dim == 8 and all(h[0].out_channels == 16 for h in model.heads)


class _ConstantScale(nn.Module):
    """A per-channel scale viewed to a size written in the code: its channels cannot follow pruning."""

    def __init__(self) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
        self.scale = nn.Parameter(torch.ones(16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.c1(x)
        return self.c2(y * self.scale.view(16, 1, 1))


def test_an_elementwise_freeze_names_its_op():
    analysis = fxprune.analyze(_ConstantScale(), torch.randn(2, 3, 8, 8))
    (group,) = [g for g in analysis.groups if "c1" in g.modules and "c2" in g.modules]
    reasons = set(group.frozen.values())
    assert group.prunable == 0 and len(reasons) == 1
    assert reasons.pop().startswith("mul at mul")
