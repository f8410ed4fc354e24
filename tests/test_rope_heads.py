"""Attention with rotary position embeddings on the head size (Gemma 4's vision encoder): the q, k and v
views ``self.q_proj(x).view(B, N, self.num_heads, self.head_dim)`` and ``self.k_proj(x).view(B, N,
self.num_kv_heads, self.head_dim)`` hold equal head counts, and the rotary split pins the head size, so
whole heads go."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune

pytestmark = pytest.mark.usefixtures("single_thread")


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_2d(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotary embedding on two halves of the head size (sizes computed from the width, as in timm)."""
    size = 2 * (x.shape[-1] // 4)
    xs, cs, ss = (torch.split(t, [size, size], dim=-1) for t in (x, cos, sin))
    parts = [p * c.unsqueeze(2) + _rotate_half(p) * s.unsqueeze(2) for p, c, s in zip(xs, cs, ss)]
    return torch.cat(parts, dim=-1)


class _Attention(nn.Module):
    def __init__(self, dim: int, num_heads: int, head_dim: int) -> None:
        super().__init__()
        self.num_heads, self.head_dim, self.num_kv_heads = num_heads, head_dim, num_heads
        self.q_proj = nn.Linear(dim, num_heads * head_dim)
        self.k_proj = nn.Linear(dim, self.num_kv_heads * head_dim)
        self.v_proj = nn.Linear(dim, self.num_kv_heads * head_dim)
        self.o_proj = nn.Linear(num_heads * head_dim, dim)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.q_proj(x).view(B, N, self.num_heads, self.head_dim)
        k = self.k_proj(x).view(B, N, self.num_kv_heads, self.head_dim)
        v = self.v_proj(x).view(B, N, self.num_kv_heads, self.head_dim)
        q, k = _rope_2d(q, cos, sin), _rope_2d(k, cos, sin)
        x = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), scale=1.0)
        return self.o_proj(x.transpose(1, 2).reshape(B, N, -1))


class _Net(nn.Module):
    def __init__(self, dim: int = 32, num_heads: int = 4, head_dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        freqs = torch.arange(0, head_dim // 2, 2).float() / head_dim
        self.register_buffer("inv_freq", 1.0 / 100.0**freqs)
        self.attn = _Attention(dim, num_heads, head_dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        pos = torch.arange(x.shape[1], dtype=x.dtype, device=x.device)
        angles = pos[:, None] * self.inv_freq[None, :]
        angles = torch.cat((angles, angles, angles, angles), dim=-1)[None]  # two halves, each cos/sin pairs
        x = x + self.attn(x, angles.cos(), angles.sin())
        x = x + self.mlp(x)
        return self.head(x.mean(1))


def test_equal_head_counts_told_apart_and_whole_heads_go_where_rope_pins_the_head_size():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 6, 12)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    attn = model.attn
    assert attn.head_dim == 8 and attn.num_heads == attn.num_kv_heads < 4  # whole heads, both counts written
    widths = {m.out_features for m in (attn.q_proj, attn.k_proj, attn.v_proj)} | {attn.o_proj.in_features}
    assert widths == {8 * attn.num_heads}  # q, k and v froze before (two views matched, rotary split)
    assert model(x).shape == (2, 10)
