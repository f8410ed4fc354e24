"""``F.scaled_dot_product_attention`` without ``scale=``: the head size is pruned and the dense scale kept by
multiplying the query rows of the layer that makes them (verified against the masked original)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


def _prune(model: nn.Module, x: torch.Tensor, **kw) -> fxprune.PruneReport:
    model.eval()
    report = fxprune.prune(model, x, ratio=0.5, round_to=1, **kw)
    assert report.verified and report.exact_error < 1e-5
    return report


class _Fused(nn.Module):
    """timm's ``Attention``: one ``qkv`` Linear viewed into (3, heads, head size), permuted, unbound."""

    def __init__(self, dim: int = 32, heads: int = 4, qk_norm: bool = False) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(self.head_dim) if qk_norm else nn.Identity()

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(self.q_norm(q), k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, -1))


class _Separate(nn.Module):
    """PVT-v2 style: a ``q`` Linear and a ``kv`` Linear; head size written as ``-1``."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.num_heads = heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        k, v = self.kv(x).reshape(B, N, 2, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class _Chunked(nn.Module):
    """``qkv(x).chunk(3, -1)``, each viewed into heads with ``C // self.num_heads``."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.num_heads = heads
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        C = q.shape[-1]
        q, k, v = (t.view(B, N, self.num_heads, C // self.num_heads).transpose(1, 2) for t in (q, k, v))
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class _Tokens(nn.Module):
    def __init__(self, attn: nn.Module, dim: int = 32) -> None:
        super().__init__()
        self.embed, self.attn, self.head = nn.Linear(8, dim), attn, nn.Linear(dim, 4)

    def forward(self, x):
        return self.head(self.attn(self.embed(x)).mean(1))


def test_fused_qkv_head_size_shrinks_and_only_the_query_rows_are_scaled(single_thread):
    torch.manual_seed(0)
    attn = _Fused()
    model, x = _Tokens(attn), torch.randn(2, 10, 8)
    dense = attn.qkv.weight.detach().clone().reshape(3, 4, 8, 32)
    _prune(model, x, ignore=["embed"])
    assert attn.num_heads == 4 and attn.qkv.out_features == 48 and attn.proj.in_features == 16
    slim = attn.qkv.weight.detach().reshape(3, 4, 4, 32)
    # each kept row is a dense row times sqrt(4 / 8) (queries) or 1 (keys, values)
    for part, factor in ((0, math.sqrt(0.5)), (1, 1.0), (2, 1.0)):
        for row in slim[part].reshape(-1, 32):
            assert torch.isclose(dense[part].reshape(-1, 32) * factor, row, atol=1e-6).all(1).any()


@pytest.mark.parametrize("block", [_Separate, _Chunked, lambda: _Fused(qk_norm=True)],
                         ids=["q-and-kv-layers", "chunk", "query-layernorm"])
def test_head_size_shrinks_with_the_scale_folded(block, single_thread):
    torch.manual_seed(0)
    attn = block()
    if isinstance(attn, _Fused):  # a LayerNorm over the head size: the removal is approximate
        nn.init.normal_(attn.q_norm.weight)
        nn.init.normal_(attn.q_norm.bias)
    model, x = _Tokens(attn), torch.randn(2, 10, 8)
    analysis = fxprune.analyze(model, x)
    assert not any("no scale=" in r for g in analysis.groups for r in g.frozen.values())
    before, heads = sum(p.numel() for p in attn.parameters()), attn.num_heads
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-5
    assert sum(p.numel() for p in attn.parameters()) < 0.7 * before
    assert attn.num_heads == heads  # head channels went, not whole heads
    layer, rows = (attn.q, 16) if isinstance(attn, _Separate) else (attn.qkv, 48)
    assert layer.out_features == rows  # half of each head's channels
    assert model(x).shape == (2, 4)


class _SharedQuery(nn.Module):
    """The query also feeds another op: scaling its rows would change that op too."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.head_dim = 2, dim // 2
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = (f(x).reshape(B, N, self.num_heads, self.head_dim).transpose(1, 2)
                   for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v) + q + k
        return out.transpose(1, 2).reshape(B, N, C)


def test_a_query_and_key_used_elsewhere_keep_the_head_size(single_thread):
    """No layer of its own to fold into: whole heads go, the head size stays (the scale is unchanged)."""
    torch.manual_seed(0)
    model, x = _Tokens(_SharedQuery(), 16), torch.randn(2, 10, 8)
    _prune(model, x, ignore=["embed"])
    q = model.attn.q
    assert model.attn.head_dim == 8 and q.out_features in (8, 16)


def test_timm_attention_with_query_norm_folds_into_the_norm(single_thread):
    """timm's ``Attention(qk_norm=True)``: the query passes a LayerNorm over the head size; its affine
    weight and bias take the factor."""
    timm_attention = pytest.importorskip("timm.layers.attention")
    torch.manual_seed(0)
    attn = timm_attention.Attention(32, num_heads=2, qk_norm=True, norm_layer=nn.LayerNorm)
    attn.fused_attn = True
    model, x = _Tokens(attn), torch.randn(2, 10, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1, ignore=["embed"])
    assert report.verified and attn.head_dim == 8 and attn.num_heads == 2
    assert torch.allclose(attn.q_norm.weight, torch.full((8,), math.sqrt(0.5)))
    assert torch.allclose(attn.k_norm.weight, torch.ones(8))


class _Reduced(nn.Module):
    """PVT-v2's spatial-reduction attention: ``q(x).reshape(B, N, self.num_heads, -1)`` and
    ``kv(x).reshape(B, -1, 2, self.num_heads, self.head_dim)`` (the ``-1`` is the sequence there)."""

    def __init__(self, dim: int = 32, heads: int = 1) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.q, self.kv, self.proj = nn.Linear(dim, dim), nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, -1).permute(0, 2, 1, 3)
        kv = self.kv(x[:, ::2]).reshape(B, -1, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


@pytest.mark.parametrize("heads", [1, 2])
def test_key_value_view_with_two_attributes_follows_the_head_size(heads, single_thread):
    """The head size attribute of the key/value view is written after slimming; with one head too."""
    torch.manual_seed(0)
    attn = _Reduced(heads=heads)
    model, x = _Tokens(attn), torch.randn(2, 10, 8)
    report = _prune(model, x)
    assert attn.num_heads == heads and attn.head_dim == 16 // heads
    assert attn.kv.out_features == 32 and report.flops_after < 0.6 * report.flops_before


def test_pvt_v2_attention_blocks_lose_head_channels(single_thread):
    """pvt_v2_b0 kept 0.665 of its FLOPs at ratio 0.5: every key/value view froze its block."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("pvt_v2_b0", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    model.eval()
    report = fxprune.prune(model, x, ratio=0.5)
    assert report.verified and report.exact_error < 1e-4
    attn = model.stages[0].blocks[0].attn
    assert attn.num_heads == 1 and attn.head_dim < 32 and attn.q.out_features == attn.head_dim
    assert report.flops_after < 0.4 * report.flops_before
