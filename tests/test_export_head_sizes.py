"""Head sizes read from the block width (``C // self.num_heads``) in a model captured by torch.export.

An exported graph writes ``C // self.num_heads`` as a plain number, while the model's own ``forward`` still
computes it from the (pruned) width at run time. The width it is read from must not shrink while the view's
sizes stay: prune() freezes it and returns a verified model that runs.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune


class _GatedAttention(nn.Module):
    """ConViT's GPSA in small: q/k from one layer, viewed in a method of its own; the width read from x."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qk = nn.Linear(dim, dim * 2)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def get_attention(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        qk = self.qk(x).reshape(B, N, 2, self.num_heads, C // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k = qk[0], qk[1]
        return (q @ k.transpose(-2, -1)).softmax(dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        attn = self.get_attention(x)
        v = self.v(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, C))


class _CrossAttention(nn.Module):
    """CrossViT's CrossAttention in small: the class token attends to every token."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.wq, self.wk, self.wv = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, C = x.shape
        q = self.wq(x[:, 0:1, ...]).reshape(B, 1, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        k = self.wk(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        v = self.wv(x).reshape(B, N, self.num_heads, C // self.num_heads).permute(0, 2, 1, 3)
        attn = (q @ k.transpose(-2, -1)).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, 1, C))


class _SubclassedAttention(_CrossAttention):
    """Inherits ``forward``: the views are found in the base class's source."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads)
        self.extra = 0


class _Net(nn.Module):
    """Patch embedding, one attention block with an MLP, a head; iterating over the batch makes symbolic
    tracing fail, so the analysis runs on the exported graph."""

    def __init__(self, attention: type[nn.Module], dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = attention(dim, heads)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = torch.stack([t for t in x])  # iteration over a tensor: only torch.export captures the model
        a = self.attn(self.norm1(x))
        x = x + a if a.shape[1] == x.shape[1] else torch.cat([x[:, :1] + a, x[:, 1:]], dim=1)
        x = x + self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return self.head(x[:, 0])


@pytest.mark.parametrize("attention", [_GatedAttention, _CrossAttention, _SubclassedAttention])
def test_exported_head_size_from_width_freezes_it(attention):
    torch.manual_seed(0)
    model, x = _Net(attention).eval(), torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    assert analysis.captured.method == "export"
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified
    assert model.embed.out_channels == 32  # the width the head size is read from stays
    assert model.fc1.out_features < 64  # the rest still prunes
    assert model(x).shape == (2, 10)


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("convit_tiny", {"img_size": 64, "depth": 2, "local_up_to_layer": 1}, 64),
        ("crossvit_tiny_240", {"img_size": 120, "depth": [[1, 1, 0]]}, 120),
    ],
)
def test_timm_head_size_from_width_in_exported_graph(single_thread, name, kwargs, size):
    """ConViT's GPSA and CrossViT's CrossAttention, small: verified (they failed to run once slimmed)."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=10, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    report = fxprune.prune(model, x, ratio=0.5)
    assert report.verified and report.exact_error < 1e-4
    assert report.flops_after < report.flops_before
