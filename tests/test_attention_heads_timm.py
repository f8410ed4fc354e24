"""Heads and head sizes of timm attention blocks: which size of a view is the head count, head sizes read
from the block's width (``C // num_heads``), softmax or sdpa over the head size (heads go whole)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.groups.view_sources import view_attributes

timm = pytest.importorskip("timm")


def _prune(model: nn.Module, x: torch.Tensor, **kw) -> fxprune.PruneReport:
    model.eval()
    report = fxprune.prune(model, x, ratio=0.5, **kw)
    assert report.verified and report.exact_error < 1e-4
    return report


def _group_of(analysis, member: str):
    (group,) = [g for g in analysis.groups if member in g.members()]
    return group


class _Heads(nn.Module):
    def __init__(self, heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, head_dim

    def forward(self, x):
        B, N, C = x.shape
        return x.reshape(B, N, 3, self.num_heads, self.head_dim)


def test_view_sizes_are_read_back_to_the_attributes_that_wrote_them():
    """3 heads next to the literal 3 of q/k/v: the source says which position is ``self.num_heads``."""
    found = view_attributes(_Heads(3, 8), [object(), object(), 3, 3, 8])
    assert [(s.kind, s.name) for s in found] == [
        ("runtime", ""), ("runtime", ""), ("literal", ""), ("attr", "num_heads"), ("attr", "head_dim")
    ]
    assert view_attributes(_Heads(3, 8), [object(), object(), 3, 4, 8]) is None  # no call matches


def test_deit_tiny_keeps_its_three_heads_and_halves_the_head_size(single_thread):
    """deit_tiny: ``reshape(B, N, 3, 3, 64)`` used to freeze every attention block, then lost one head of
    three; the head size follows now (sdpa's default scale folds into the q rows of ``qkv``)."""
    torch.manual_seed(0)
    model = timm.create_model("deit_tiny_patch16_224", img_size=32, depth=2, num_classes=10)
    x = torch.randn(1, 3, 32, 32)
    report = _prune(model, x, ignore=["blocks.*.mlp"])
    for block in model.blocks:
        attn = block.attn
        assert attn.num_heads == 3 and attn.head_dim == 32 and attn.attn_dim == 96
        assert attn.qkv.out_features == 288 and attn.proj.in_features == 96
    assert report.flops_after < report.flops_before


def test_coat_head_size_from_the_block_width_follows_it(single_thread):
    """CoaT's ``reshape(B, N, 3, self.num_heads, C // self.num_heads)``: the head size and the block
    width shrink together (width = heads x head size), the per-head conv splits follow."""
    coat = pytest.importorskip("timm.models.coat")
    torch.manual_seed(0)
    model = coat.CoaT(
        img_size=32, patch_size=4, embed_dims=(32, 32, 32, 32), serial_depths=(1, 1, 1, 1), parallel_depth=1,
        num_heads=4, mlp_ratios=(2, 2, 2, 2), num_classes=10, crpe_window={3: 2, 5: 2},
    )
    x = torch.randn(1, 3, 32, 32)
    report = _prune(model, x)
    attn = model.serial_blocks1[0].factoratt_crpe
    width = attn.qkv.in_features
    assert width < 32 and width % 4 == 0
    assert attn.qkv.out_features == 3 * width and attn.proj.in_features == width
    assert sum(attn.crpe.channel_splits) == width
    assert report.flops_after < 0.6 * report.flops_before
    assert model(x).shape == (1, 10)


class _Tokens(nn.Module):
    """An embedding, one attention block on (B, H, W, C) or (B, N, C) tokens, and a classifier."""

    def __init__(self, attn: nn.Module, dim: int, grid: bool) -> None:
        super().__init__()
        self.embed, self.attn, self.grid = nn.Linear(8, dim), attn, grid
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.embed(x)
        x = self.attn(x.reshape(x.shape[0], 4, 4, -1) if self.grid else x)
        return self.head(x.flatten(1, -2).mean(1))


def test_sdpa_without_scale_loses_head_channels(single_thread):
    """SAM2's MultiScaleAttention: ``reshape(B, HW, 3, self.num_heads, -1)`` into ``F.sdpa(q, k, v)``,
    whose default scale is 1/sqrt(head size): the factor folds into the q rows of ``qkv``, so the head
    size shrinks and the heads stay."""
    sam2 = pytest.importorskip("timm.models.hieradet_sam2")
    torch.manual_seed(0)
    attn = sam2.MultiScaleAttention(32, 32, num_heads=4)
    attn.fused_attn = True
    model, x = _Tokens(attn, 32, grid=True), torch.randn(2, 16, 8)
    analysis = fxprune.analyze(model, x)
    head = _group_of(analysis, "attn.qkv.weight[0]")
    assert head.width == 8 and head.divisor == 4 and head.prunable == 8
    _prune(model, x, round_to=1, ignore=["embed"])
    assert attn.num_heads == 4 and attn.qkv.out_features == 48 and attn.proj.in_features == 16


class _OneHead(nn.Module):
    """One head whose query and key also feed the output: no layer of their own takes sdpa's scale."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.num_heads, self.qkv, self.proj = 1, nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v) + q * k
        return self.proj(out.transpose(1, 2).flatten(2))


def test_sdpa_without_scale_freezes_a_head_size_it_cannot_replace_by_heads(single_thread):
    torch.manual_seed(0)
    model, x = _Tokens(_OneHead(16), 16, grid=False), torch.randn(2, 16, 8)
    analysis = fxprune.analyze(model, x)
    qk = _group_of(analysis, "attn.qkv.weight[0]")
    assert qk.prunable == 0 and "no scale=" in next(iter(qk.frozen.values()))
    _prune(model, x, round_to=1)
    assert model.attn.qkv.out_features == 48


def test_cross_covariance_attention_loses_whole_heads(single_thread):
    """EdgeNeXt/XCiT's XCA softmaxes over the head channels: heads go whole, with their temperature."""
    edgenext = pytest.importorskip("timm.models.edgenext")
    torch.manual_seed(0)
    attn = edgenext.CrossCovarianceAttn(32, num_heads=4)
    nn.init.normal_(attn.temperature)
    model, x = _Tokens(attn, 32, grid=False), torch.randn(2, 16, 8)
    report = _prune(model, x, round_to=1, ignore=["head"])
    assert attn.num_heads == 2 and attn.temperature.shape == (2, 1, 1)
    assert attn.qkv.out_features == 48 and model.embed.out_features == 16
    assert report.flops_after < report.flops_before


class _ScaleTokens(nn.Module):
    """Class tokens of several scales stacked and mixed by a kernel-1 ``Conv1d`` (CoaT's aggregate)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(8, 32), nn.Linear(8, 32)
        self.aggregate = nn.Conv1d(2, 1, kernel_size=1)
        self.head = nn.Linear(32, 4)

    def forward(self, x):
        tokens = torch.stack([self.a(x), self.b(x)], dim=1)  # (B, 2, 32)
        return self.head(self.aggregate(tokens).squeeze(1))


def test_kernel_one_conv_keeps_channels_on_its_length_dim(single_thread):
    torch.manual_seed(0)
    model, x = _ScaleTokens(), torch.randn(3, 8)
    _prune(model, x, round_to=1)
    assert model.a.out_features == model.b.out_features == model.head.in_features == 16


def test_talking_heads_keep_the_head_size_prunable(single_thread):
    """CaiT's talking heads mix the head dim with linear layers (it freezes); the head size next to it in
    ``reshape(B, N, C)`` still follows the block width."""
    cait = pytest.importorskip("timm.models.cait")
    torch.manual_seed(0)
    attn = cait.TalkingHeadAttn(32, num_heads=4)
    model, x = _Tokens(attn, 32, grid=False), torch.randn(2, 16, 8)
    _prune(model, x, round_to=1)
    assert attn.qkv.in_features == attn.proj.out_features == 16 and attn.qkv.out_features == 48



class _BiasedHeads(nn.Module):
    """BEiT: a relative-position table (one column per head) gathered and passed to sdpa as ``attn_mask``;
    ``qkv`` applied with ``F.linear`` (no layer call to fold sdpa's scale into): whole heads go."""

    def __init__(self, dim: int = 32, heads: int = 4, tokens: int = 16) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.table = nn.Parameter(torch.randn(2 * tokens, heads))
        self.register_buffer("index", torch.randint(0, 2 * tokens, (tokens * tokens,)))

    def forward(self, x):
        B, N, C = x.shape
        qkv = F.linear(x, self.qkv.weight, self.qkv.bias).reshape(B, N, 3, self.num_heads, -1)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.table[self.index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)
        x = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


def test_attention_mask_per_head_loses_the_same_heads(single_thread):
    """The mask's head dim used to stay at 4 while q/k/v lost heads: the slim model failed to run."""
    torch.manual_seed(0)
    attn = _BiasedHeads()
    model, x = _Tokens(attn, 32, grid=False), torch.randn(2, 16, 8)
    _prune(model, x, round_to=1, ignore=["embed"])
    assert attn.num_heads == 2 and attn.table.shape == (32, 2) and attn.qkv.out_features == 48


def test_beit_relative_position_bias_follows_the_heads(single_thread):
    torch.manual_seed(0)
    model = timm.create_model("beit_base_patch16_224", img_size=64, depth=2, num_classes=10)
    report = _prune(model, torch.randn(1, 3, 64, 64))
    attn = model.blocks[0].attn
    assert attn.num_heads == 6 and attn.relative_position_bias_table.shape[1] == 6
    assert report.flops_after < 0.3 * report.flops_before


def test_channel_attention_with_head_size_from_the_width_loses_whole_heads(single_thread):
    """DaViT's channel attention: ``reshape(B, N, 3, self.num_heads, C // self.num_heads)`` with ``C`` the
    block width, softmax over head channels: heads go whole, each with its part of the width (the width
    used to freeze)."""
    davit = pytest.importorskip("timm.models.davit")
    torch.manual_seed(0)
    attn = davit.ChannelAttention(32, num_heads=4)
    model, x = _Tokens(attn, 32, grid=False), torch.randn(2, 16, 8)
    report = _prune(model, x, round_to=1)
    assert attn.num_heads == 2 and attn.qkv.in_features == 16 and attn.qkv.out_features == 48
    assert report.flops_after < 0.6 * report.flops_before


class _MixedHeads(nn.Module):
    """XCiT: cross-covariance attention (whole heads only) and class attention (head size ``C // heads``,
    into sdpa) on one residual width."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        xcit = pytest.importorskip("timm.models.xcit")
        self.embed, self.head = nn.Linear(8, dim), nn.Linear(dim, 4)
        self.xca, self.cls_attn = xcit.XCA(dim, heads), xcit.ClassAttn(dim, heads)
        self.cls_attn.fused_attn = True
        nn.init.normal_(self.xca.temperature)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.xca(x)
        x = x + self.cls_attn(x)
        return self.head(x[:, 0])


def test_whole_heads_in_one_block_make_every_block_on_the_width_follow_heads(single_thread):
    """Head size in one block and whole heads in the other tied the width into one atom (it stayed)."""
    torch.manual_seed(0)
    model, x = _MixedHeads(), torch.randn(2, 16, 8)
    report = _prune(model, x, round_to=1)
    assert model.embed.out_features == 16
    assert model.xca.num_heads == model.cls_attn.num_heads == 2
    assert report.flops_after < 0.6 * report.flops_before


class _BiasMlpHeads(nn.Module):
    """timm's Swin V2: a bias MLP gives one row per head, gathered per position pair, added to the scores."""

    def __init__(self, dim: int = 48, heads: int = 6, tokens: int = 16) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.cpb_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, heads, bias=False))
        self.register_buffer("coords", torch.randn(1, 7, 2))
        self.register_buffer("index", torch.randint(0, 7, (tokens * tokens,)))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).reshape(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)
        table = self.cpb_mlp(self.coords).view(-1, self.num_heads)
        bias = table[self.index].view(N, N, -1).permute(2, 0, 1).contiguous()
        attn = (attn + 16 * torch.sigmoid(bias).unsqueeze(0)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


def test_bias_mlp_rows_per_head_take_no_part_in_alignment(single_thread):
    """At the default multiple of 8, the MLP's 6 rows (one a head) used to keep every head."""
    torch.manual_seed(0)
    attn = _BiasMlpHeads()
    model, x = _Tokens(attn, 48, grid=False), torch.randn(2, 16, 8)
    _prune(model, x, ignore=["embed"])
    assert attn.num_heads == 3 and attn.cpb_mlp[2].out_features == 3 and attn.qkv.out_features == 72
