"""Regressions found by the one-model-per-timm-family sweep (bench/timm_families.py), on tiny models."""

from __future__ import annotations

import torch
from torch import nn

import fxprune
from fxprune.measure import count_flops


class _TokenBlock(nn.Module):
    def __init__(self, dim: int) -> None:
        super().__init__()
        self.fc = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, token: torch.Tensor) -> torch.Tensor:
        return token + self.fc(x).mean(1, keepdim=True)


class _ClassToken(nn.Module):
    """A learned token expanded to the batch and passed into a submodule (CaiT's class-attention blocks)."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Linear(8, dim)
        self.token = nn.Parameter(torch.randn(1, 1, dim))
        self.block = _TokenBlock(dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        token = self.token.expand(x.shape[0], -1, -1)
        return self.head(self.block(x, token)[:, 0])


def test_flops_counted_with_an_expanded_parameter_passed_to_a_submodule():
    model, x = _ClassToken(), torch.randn(2, 5, 8)
    dense = count_flops(model, x)
    assert dense > 0
    assert all(p.requires_grad for p in model.parameters())  # restored after counting
    report = fxprune.prune(model, x, ratio=0.5)
    assert report.warnings == []
    assert report.verified
    assert report.flops_before == dense and 0 < report.flops_after < dense
