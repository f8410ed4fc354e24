"""Views written with a head size from attributes beside a ``-1`` head count, and slices that drop a
padded column (EfficientViT's LiteMLA: ``reshape(B, -1, 3 * self.dim, N)``, ``out[..., :-1]``)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


class _LinearAttention(nn.Module):
    """ReLU linear attention: q/k/v per head from one conv, v padded with ones for the normaliser."""

    def __init__(self, dim: int, head_dim: int) -> None:
        super().__init__()
        self.dim = head_dim
        self.qkv = nn.Conv2d(dim, 3 * dim, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        qkv = self.qkv(x).reshape(B, -1, 3 * self.dim, H * W).transpose(-1, -2)
        q, k, v = qkv.chunk(3, dim=-1)
        q, k = torch.relu(q), torch.relu(k)
        v = F.pad(v, (0, 1), mode="constant", value=1.0)
        out = q @ (k.transpose(-1, -2) @ v)
        out = out[..., :-1] / (out[..., -1:] + 1e-6)
        return self.proj(out.transpose(-1, -2).reshape(B, -1, H, W))


class _Net(nn.Module):
    def __init__(self, dim: int = 32, head_dim: int = 8) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, 2, 1)
        self.attn = _LinearAttention(dim, head_dim)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.ReLU(), nn.Conv2d(2 * dim, dim, 1))
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.attn(x)
        x = x + self.mlp(x)
        return self.head(x.mean((2, 3)))


def test_head_size_from_attributes_beside_a_head_count_follows_the_channels():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    qkv = [g for g in analysis.groups if "attn.qkv" in g.modules]
    assert qkv and all(g.prunable > 0 for g in qkv)  # it froze: "channel dim split with constant sizes"
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    assert model.attn.qkv.out_channels < 96
    assert model.attn.qkv.out_channels == 3 * model.attn.proj.in_channels
    assert model.attn.proj.in_channels % model.attn.dim == 0 and model.attn.dim < 8  # the attribute written
    assert model(x).shape == (2, 10)


def test_efficientvit_linear_attention_prunes(single_thread):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("efficientvit_b0", num_classes=10).eval()
    x = torch.randn(1, 3, 64, 64)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    mla = model.stages[2].blocks[1].context_module.main
    assert mla.qkv.conv.out_channels < 3 * 64


class _HieraAttention(nn.Module):
    """Hiera's attention in small: heads and head size from attributes, the output width ``self.dim_out``."""

    def __init__(self, dim: int, heads: int) -> None:
        super().__init__()
        self.heads, self.head_dim, self.dim_out = heads, dim // heads, dim
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, _ = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = (q @ k.transpose(-2, -1)).softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, -1, self.dim_out))


class _Tokens(nn.Module):
    def __init__(self, heads: int, dim: int = 32) -> None:
        super().__init__()
        self.embed = nn.Linear(12, dim)
        self.attn = _HieraAttention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        x = x + self.attn(x)
        x = x + self.fc2(torch.relu(self.fc1(x)))
        return self.head(x.mean(1))


@pytest.mark.parametrize("heads", [1, 2])
def test_output_width_attribute_of_merged_heads_follows_the_head_size(heads):
    """``reshape(B, -1, self.dim_out)`` merging heads and head size: ``dim_out`` is written after slimming
    (with one head, ``dim_out == head_dim`` made the value alone ambiguous)."""
    torch.manual_seed(0)
    model, x = _Tokens(heads).eval(), torch.randn(2, 9, 12)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    attn = model.attn
    assert attn.qkv.out_features < 96 and attn.dim_out == attn.proj.in_features == attn.heads * attn.head_dim
    assert model(x).shape == (2, 10)
