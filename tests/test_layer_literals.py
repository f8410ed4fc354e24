"""Sizes and copies that follow pruning after all: a LayerNorm subclass's own ``normalized_shape`` (slimming
rewrites it), a window position embedding tiled over the image (``tile`` copies its channels), a global query
repeated over the windows of its image (``repeat_interleave`` on the batch dim)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


class _LayerNorm(nn.LayerNorm):
    """timm's ``LayerNorm``: ``F.layer_norm(x, self.normalized_shape, ...)`` in its own forward."""

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)


class _Block(nn.Module):
    """SAM2's block reads ``self.dim`` in forward; its norm's width is the same number."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.dim = self.dim_out = dim
        self.norm = _LayerNorm(dim)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)

    def forward(self, x):
        y = self.norm(x) if self.dim == self.dim_out else x
        return x + self.fc2(F.gelu(self.fc1(y)))


class _Tiled(nn.Module):
    """SAM2's position embedding: a window embedding tiled over the feature map, added to the tokens."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, dim, 3, padding=1)
        self.window = nn.Parameter(torch.randn(1, dim, 2, 2))
        self.block = _Block(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.window.tile((x.shape[-2] // 2, x.shape[-1] // 2))
        x = self.block(x.permute(0, 2, 3, 1))
        return self.head(x.mean((1, 2)))


def _prune(model: nn.Module, x: torch.Tensor) -> fxprune.PruneReport:
    model.eval()
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and (report.exact_error or 0) < 1e-4
    return report


def test_layer_norm_width_and_tiled_embedding_follow_pruning(single_thread):
    torch.manual_seed(0)
    model, x = _Tiled(), torch.randn(2, 3, 8, 8)
    analysis = fxprune.analyze(model, x)
    assert not analysis.unsupported
    stem = next(g for g in analysis.groups if "stem.weight[0]" in g.members())
    assert stem.prunable == 32 and "window[1]" in stem.members()
    _prune(model, x)
    assert model.stem.out_channels == 16 and model.window.shape == (1, 16, 2, 2)
    assert model.block.norm.normalized_shape == (16,)


def test_sam2_hiera_stages_are_pruned(single_thread):
    """sam2_hiera_tiny kept 0.529 of its FLOPs: ``tile`` was not understood and the norms' widths were taken
    for the blocks' ``dim``/``dim_out`` written as literals."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("sam2_hiera_tiny", num_classes=10)
    x = torch.randn(1, 3, 64, 64)
    analysis = fxprune.analyze(model.eval(), x)
    assert not analysis.unsupported
    report = fxprune.prune(model, x, ratio=0.5)
    assert report.verified and report.exact_error < 1e-4
    assert report.flops_after < 0.4 * report.flops_before
    assert model.blocks[0].norm1.normalized_shape[0] < 96


class _GlobalQuery(nn.Module):
    """GCViT's global attention: one query per image, repeated over its windows; keys and values from a
    ``kv`` Linear viewed as ``(B, N, 2, self.num_heads, self.head_dim)``."""

    def __init__(self, dim: int = 32, heads: int = 2) -> None:
        super().__init__()
        self.num_heads, self.head_dim = heads, dim // heads
        self.scale = self.head_dim**-0.5
        self.embed, self.query = nn.Linear(8, dim), nn.Linear(8, dim)
        self.qkv, self.proj, self.head = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim), nn.Linear(dim, 4)

    def forward(self, x, image):
        x = self.embed(x)  # (windows, N, C), the windows of one image
        B, N, C = x.shape
        k, v = self.qkv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        q = self.query(image).repeat_interleave(B // image.shape[0], dim=0)
        q = q.reshape(B, N, self.num_heads, self.head_dim).permute(0, 2, 1, 3) * self.scale
        x = ((q @ k.transpose(-2, -1)).softmax(-1) @ v).transpose(1, 2).reshape(B, N, C)
        return self.head(self.proj(x).mean(1))


def test_query_repeated_over_windows_keeps_its_channels(single_thread):
    torch.manual_seed(0)
    model, x, image = _GlobalQuery().eval(), torch.randn(4, 6, 8), torch.randn(1, 6, 8)
    analysis = fxprune.analyze(model, (x, image))
    assert not analysis.unsupported
    report = fxprune.prune(model, (x, image), ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-5
    assert model.query.out_features == 16 and model.qkv.out_features == 32 and model.head_dim == 8
