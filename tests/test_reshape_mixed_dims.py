"""Channels reshaped together with other dims: MobileViT's unfold ``(B, C, H, W) -> (B * C * n_h, p_h, n_w,
p_w)`` and the fold back merge the channel dim with the batch and rows; the channels follow the merged dim."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.groups.labels import reshape_labels
from fxprune.groups.slots import SlotTable

pytestmark = pytest.mark.usefixtures("single_thread")


class _PatchBlock(nn.Module):
    """Conv, unfold into patches, an MLP with a residual over the patch tokens, fold back, conv."""

    def __init__(self, dim: int = 16, patch: int = 2) -> None:
        super().__init__()
        self.patch = patch
        self.conv = nn.Conv2d(3, dim, 3, padding=1)
        self.fc1 = nn.Linear(dim, 2 * dim)
        self.fc2 = nn.Linear(2 * dim, dim)
        self.proj = nn.Conv2d(dim, dim, 1)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        B, C, H, W = x.shape
        p = self.patch
        n_h, n_w = H // p, W // p
        y = x.reshape(B * C * n_h, p, n_w, p).transpose(1, 2)
        y = y.reshape(B, C, n_h * n_w, p * p).transpose(1, 3).reshape(B * p * p, n_h * n_w, -1)
        y = y + self.fc2(torch.relu(self.fc1(y)))
        y = y.contiguous().view(B, p * p, n_h * n_w, -1)
        y = y.transpose(1, 3).reshape(B * C * n_h, n_w, p, p)
        y = y.transpose(1, 2).reshape(B, C, n_h * p, n_w * p)
        y = self.proj(y)
        return self.head(y.mean((2, 3)))


def test_merged_channel_dim_carries_the_channel_of_each_index():
    t = SlotTable()
    ch = t.new(4)
    # (B=2, C=4, H=6, W=6) -> (B * C * 3, 2, 3, 2): only the first size is computed at run time
    out = reshape_labels(t, (2, 4, 6, 6), {1: ch}, (24, 2, 3, 2), [True, False, False, False], "unfold")
    assert list(out) == [0] and np.array_equal(out[0], np.tile(np.repeat(ch, 3), 2))
    assert not t.frozen
    # and back: (B * C * 3, 2, 3, 2) -> (B, C, 6, 6), the channel size computed
    back = reshape_labels(t, (24, 2, 3, 2), out, (2, 4, 6, 6), [False, True, False, False], "fold")
    assert list(back) == [1] and np.array_equal(back[1], ch) and not t.frozen


@pytest.mark.parametrize(
    "adaptive",
    [[False, False, False, False], [True, True, False, False]],  # channel size constant; two computed sizes
)
def test_merged_channel_dim_freezes_unless_its_size_alone_follows(adaptive):
    t = SlotTable()
    ch = t.new(4)
    out = reshape_labels(t, (2, 4, 6, 6), {1: ch}, (24, 2, 3, 2), adaptive, "unfold")
    assert not out and all(int(r) in t.frozen for r in t.roots(ch))


def test_channels_follow_an_unfold_into_patches_and_the_fold_back():
    torch.manual_seed(0)
    model, x = _PatchBlock().eval(), torch.randn(2, 3, 8, 8)
    analysis = fxprune.analyze(model, x)
    conv = [g for g in analysis.groups if "conv" in g.modules]
    assert conv and conv[0].prunable == 16  # it froze: "reshape mixes channels with other dims"
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    assert model.conv.out_channels == model.fc2.out_features == model.proj.in_channels < 16
    assert model(x).shape == (2, 10)
