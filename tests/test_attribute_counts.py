"""Channel counts that forward computes from module attributes: checked after propagation, divided
attributes (``self.expand_chs // 2``), forwards assigned per instance; grouped convs and alignment."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.measure import count_flops


def _kept(model: nn.Module, x: torch.Tensor, **kw) -> tuple[nn.Module, float]:
    dense = count_flops(model, x)
    report = fxprune.prune(model, x, 0.5, **kw)  # raises VerificationError if the slim model differs
    return model, count_flops(model, x) / dense if report is not None else 1.0


def _frozen(model: nn.Module, x: torch.Tensor, module: str) -> int:
    """Frozen output channels of ``module``'s weight."""
    a = fxprune.analyze(model, x)
    return sum(len(g.frozen) for g in a.groups if f"{module}.weight[0]" in g.members())


def test_dpn_slices_sized_by_one_attribute_and_coupled_later_follow_pruning():
    """DPN's ``x_s[:, :self.num_1x1_c]`` and ``x[:, :self.num_1x1_c]`` are coupled by ``x_s1 + out1`` only
    after both slices; deciding at the second slice froze them (0.52 of FLOPs kept on this model)."""
    dpn = pytest.importorskip("timm.models.dpn")
    torch.manual_seed(0)
    model = dpn.DPN(
        k_sec=(1, 1, 1, 1), inc_sec=(16, 32, 32, 64), k_r=128, groups=32, small=True,
        num_init_features=10, num_classes=10,
    ).eval()  # fmt: skip
    block = model.features.conv2_1
    dense = block.num_1x1_c
    model, kept = _kept(model, torch.randn(1, 3, 64, 64))
    assert kept <= 0.4
    assert block.num_1x1_c < dense and block.num_1x1_c < block.c1x1_c.conv.out_channels


class _Head(nn.Module):
    """An attribute used by two slices of tensors that are not coupled otherwise: it follows both once
    their channels are tied position by position (they then lose the same count)."""

    def __init__(self) -> None:
        super().__init__()
        self.n = 8
        self.a, self.b = nn.Conv2d(4, 16, 1), nn.Conv2d(4, 16, 1)
        self.out = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        y, z = self.a(x), self.b(x)
        return self.out(torch.cat([y[:, : self.n], z[:, : self.n]], 1))


def test_one_attribute_slicing_uncoupled_tensors_ties_them():
    model, x = _Head().eval(), torch.randn(1, 4, 8, 8)
    assert _frozen(model, x, "a") == 0 and _frozen(model, x, "b") == 0
    fxprune.prune(model, x, 0.5, round_to=1)  # verified
    assert model.n < 8 and model.a.out_channels == model.b.out_channels < 16


class _CrossHalf(nn.Module):
    """timm's CSP stage: ``x.split(self.expand_chs // 2, dim=1)``, one half through a block."""

    def __init__(self, chs: int = 32, attr: int | None = None) -> None:
        super().__init__()
        self.expand_chs = attr or chs
        self.conv_exp = nn.Conv2d(8, chs, 1)
        self.block = nn.Conv2d(chs // 2, chs // 2, 3, padding=1)
        self.out = nn.Conv2d(chs, 8, 1)

    def forward(self, x):
        x = self.conv_exp(x)
        x1, x2 = x.split(self.expand_chs // 2, dim=1)
        return self.out(torch.cat([self.block(x1), x2], 1))


def test_split_size_divided_from_an_attribute_follows_pruning():
    x = torch.randn(1, 8, 8, 8)
    model, kept = _kept(_CrossHalf().eval(), x, round_to=1)
    assert model.conv_exp.out_channels == 16 and model.expand_chs == 16 and kept < 0.6


class _CrossQuarter(_CrossHalf):
    def forward(self, x):
        x = self.conv_exp(x)
        x1, x2 = x.split(self.expand_chs // 4, dim=1)  # the halves of 32 channels, but written as 64 // 4
        return self.out(torch.cat([self.block(x1), x2], 1))


def test_divided_attribute_that_is_not_the_split_width_freezes():
    model, x = _CrossQuarter(chs=32, attr=64).eval(), torch.randn(1, 8, 8, 8)
    assert _frozen(model, x, "conv_exp") == 32
    fxprune.prune(model, x, 0.5, round_to=1)
    assert model.expand_chs == 64 and model.conv_exp.out_channels == 32


class _SplitPaths(nn.Module):
    """Selective-kernel conv: ``torch.split(x, self.in_channels // self.num_paths, 1)``."""

    def __init__(self, chs: int = 16) -> None:
        super().__init__()
        self.in_channels, self.num_paths = chs, 2
        self.paths = nn.ModuleList(nn.Conv2d(chs // 2, chs, 3, padding=1) for _ in range(2))

    def forward(self, x):
        parts = torch.split(x, self.in_channels // self.num_paths, 1)
        return sum(p(parts[i]) for i, p in enumerate(self.paths))


def test_split_paths_in_every_block_of_a_residual_stage():
    """One split of the residual stream per block: the same halves constrained twice must not freeze."""
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), _SplitPaths(), _SplitPaths(), nn.Conv2d(16, 4, 1))

    class Residual(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem, self.b1, self.b2, self.head = model

        def forward(self, x):
            x = self.stem(x)
            x = x + self.b1(x)
            return self.head(x + self.b2(x))

    res, x = Residual().eval(), torch.randn(1, 3, 8, 8)
    assert _frozen(res, x, "stem") == 0
    res, kept = _kept(res, x, round_to=1)
    assert res.b1.in_channels == res.b2.in_channels == res.stem.out_channels == 8 and kept < 0.6


class _PartialConv(nn.Module):
    """FasterNet's partial conv: ``self.forward = self.forward_split_cat`` assigned in ``__init__``."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.dim_conv3, self.dim_untouched = dim // 4, dim - dim // 4
        self.partial_conv3 = nn.Conv2d(self.dim_conv3, self.dim_conv3, 3, 1, 1, bias=False)
        self.forward = self.forward_split_cat

    def forward_split_cat(self, x):
        x1, x2 = torch.split(x, [self.dim_conv3, self.dim_untouched], dim=1)
        return torch.cat((self.partial_conv3(x1), x2), 1)


def test_split_sizes_read_by_a_forward_assigned_per_instance():
    model = nn.Sequential(nn.Conv2d(3, 32, 1), _PartialConv(), nn.Conv2d(32, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    assert _frozen(model, x, "0") == 0
    fxprune.prune(model, x, 0.5, round_to=1)
    pconv = model[1]
    assert pconv.dim_conv3 + pconv.dim_untouched == model[0].out_channels < 32
    assert pconv.dim_conv3 == pconv.partial_conv3.in_channels


def _grouped_block(groups: int, group_width: int) -> nn.Sequential:
    c = groups * group_width
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, c, 3, padding=1, groups=groups), nn.BatchNorm2d(c), nn.ReLU(),
        nn.Conv2d(c, 8, 1),
    )  # fmt: skip


@pytest.mark.parametrize("groups", [3, 13])
def test_grouped_conv_with_narrow_groups_loses_whole_groups_at_the_default_alignment(groups):
    """RegNet: 13 groups of 8 channels. By positions, 8-channel alignment could only remove all 8 or none;
    whole groups keep every width a multiple of 8 and the group width intact."""
    torch.manual_seed(0)
    model, x = _grouped_block(groups, 8).eval(), torch.randn(1, 3, 8, 8)
    model, kept = _kept(model, x)
    conv = model[3]
    assert conv.groups < groups and conv.out_channels == conv.in_channels == 8 * conv.groups
    assert model[0].out_channels == conv.in_channels and conv.weight.shape[1] == 8
    assert kept < 0.75


def test_grouped_conv_with_groups_a_multiple_of_the_alignment_keeps_its_group_count():
    """ResNeXt-like, 8 groups of 4: positions keep widths aligned. The input positions count 8 channels
    each (one per group), so they are pruned at the default alignment too."""
    torch.manual_seed(0)
    model = _grouped_block(8, 4).eval()
    fxprune.prune(model, torch.randn(1, 3, 8, 8), 0.5)
    conv = model[3]
    assert conv.groups == 8 and conv.out_channels < 32 and conv.in_channels < 32
    assert conv.in_channels == 8 * conv.weight.shape[1] == model[0].out_channels


@pytest.mark.parametrize(
    ("groups", "width", "whole"),
    [(13, 8, 1), (55, 8, 1), (6, 8, 0), (7, 24, 1), (3, 24, 0), (32, 4, 0), (9, 16, 0), (2, 64, 0)],
)
def test_whole_groups_are_chosen_only_where_positions_align_worse(groups, width, whole):
    from fxprune.groups.grouped_conv import whole_groups_are_finer

    assert whole_groups_are_finer(groups, width, width) is bool(whole)


def test_grouped_conv_keeps_its_groups_when_widths_need_no_alignment():
    torch.manual_seed(0)
    model = _grouped_block(13, 8).eval()
    fxprune.prune(model, torch.randn(1, 3, 8, 8), 0.5, round_to=1)
    conv = model[3]
    assert conv.groups == 13 and conv.weight.shape[1] < 8 and conv.out_channels < 104


def test_grouped_convs_are_shaped_for_the_planners_default_alignment():
    from fxprune.groups.grouped_conv import ALIGNMENT
    from fxprune.plan import DEFAULT_ROUND_TO

    assert ALIGNMENT == DEFAULT_ROUND_TO


@pytest.mark.parametrize(
    ("factory", "chans"), [(lambda: _grouped_block(13, 8), 3), (_CrossHalf, 8)], ids=["whole-groups", "split"]
)
def test_counts_written_to_attributes_survive_save_and_load(tmp_path, factory, chans):
    torch.manual_seed(0)
    model, x = factory().eval(), torch.randn(1, chans, 8, 8)
    fxprune.prune(model, x, 0.5)
    fxprune.save(model, tmp_path / "slim.pt")
    loaded = fxprune.load(factory, tmp_path / "slim.pt").eval()
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))


def test_grouped_conv_with_a_standardized_weight_loses_whole_groups():
    """NF-RegNet: ``ScaledStdConv2d`` with 3 groups of 8. Whole groups keep every kept filter's fan-in, so
    the standardization statistics of the kept filters do not change (exact)."""
    layers = pytest.importorskip("timm.layers")
    torch.manual_seed(0)
    model = nn.Sequential(
        layers.ScaledStdConv2d(3, 24, 3, padding=1), nn.ReLU(),
        layers.ScaledStdConv2d(24, 24, 3, padding=1, groups=3), nn.ReLU(),
        nn.Conv2d(24, 8, 1),
    ).eval()  # fmt: skip
    report = fxprune.prune(model, torch.randn(1, 3, 8, 8), 0.5)
    conv = model[2]
    assert conv.groups < 3 and conv.out_channels == conv.in_channels == 8 * conv.groups
    assert report.exact_error is not None and not report.approx_groups


class _SingleHead(nn.Module):
    """SHViT's single-head attention: ``split(x, [self.pdim, self.dim - self.pdim])``; the first piece is
    attended (its width also sizes ``v``), the rest passes."""

    def __init__(self, dim: int = 32, pdim: int = 8, qk_dim: int = 4) -> None:
        super().__init__()
        self.dim, self.pdim, self.qk_dim = dim, pdim, qk_dim
        self.qkv = nn.Conv2d(pdim, 2 * qk_dim + pdim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        B, _, H, W = x.shape
        x1, x2 = torch.split(x, [self.pdim, self.dim - self.pdim], dim=1)
        q, k, v = torch.split(self.qkv(x1), [self.qk_dim, self.qk_dim, self.pdim], dim=1)
        attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(-1)
        x1 = (v.flatten(2) @ attn.transpose(-2, -1)).reshape(B, self.pdim, H, W)
        return self.proj(torch.cat([x1, x2], dim=1))


def test_split_remainder_written_as_total_minus_an_attribute_follows_pruning():
    """``self.dim - self.pdim``: ``dim`` is written as the kept total; the attended piece (``pdim`` also
    sizes ``v``, in another group) follows too, its channels tied to ``v``'s position by position."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), _SingleHead(), nn.Conv2d(32, 4, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-5
    head = model[1]
    assert head.pdim < 8 and head.dim == model[0].out_channels < 32
    assert head.qkv.in_channels == head.pdim and head.qkv.out_channels == 2 * head.qk_dim + head.pdim
    assert head.proj.in_channels == head.dim


class _Scale(nn.Module):
    """MetaFormer's ``Scale``: ``x * self.scale.view(self.shape)`` with ``self.shape = (dim, 1, 1)``."""

    def __init__(self, dim: int, shape: tuple) -> None:
        super().__init__()
        self.shape, self.scale = shape, nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x):
        return x * self.scale.view(self.shape)


@pytest.mark.parametrize("nchw", [True, False], ids=["dim-1-1", "dim"])
def test_parameter_viewed_to_a_shape_attribute_follows_pruning(nchw):
    """The view's sizes are the tuple attribute: ``shape[0]`` is written (the stream used to freeze)."""
    torch.manual_seed(0)
    scale = _Scale(16, (16, 1, 1) if nchw else (16,))
    body = [nn.Conv2d(3, 16, 3, padding=1), scale, nn.Conv2d(16, 4, 1)]
    if not nchw:
        body[1:2] = [_Permute((0, 2, 3, 1)), scale, _Permute((0, 3, 1, 2))]
    model, x = nn.Sequential(*body).eval(), torch.randn(1, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-5
    assert scale.shape == ((8, 1, 1) if nchw else (8,)) and scale.scale.shape == (8,)


class _Permute(nn.Module):
    def __init__(self, dims: tuple) -> None:
        super().__init__()
        self.dims = dims

    def forward(self, x):
        return x.permute(self.dims)
