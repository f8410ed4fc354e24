"""Padding layers (``nn.ZeroPad2d`` before a depthwise conv, as in timm's CPU-bone) pass channels; a conv
subclass padding in its own forward (timm's ``Conv2dSame``) keeps its groups prunable."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune


@pytest.mark.parametrize("pad", [nn.ZeroPad2d((0, 1, 0, 1)), nn.ReflectionPad2d(1), nn.ConstantPad2d(1, 0.5)])
def test_padding_layer_passes_channels(pad):
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3), nn.ReLU(), pad, nn.Conv2d(16, 16, 3, groups=16), nn.Conv2d(16, 8, 1)
    ).eval()
    x = torch.randn(2, 3, 12, 12)
    analysis = fxprune.analyze(model, x)
    assert not analysis.unsupported
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and model[0].out_channels == model[3].groups == 8


class _SameConv(nn.Conv2d):
    """Pads in forward and calls ``F.conv2d`` with its own ``self.groups`` (a literal in the traced graph)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.pad(x, (1, 1, 1, 1))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def test_conv_subclass_groups_literal_follows_the_layer():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(),
                          _SameConv(16, 16, 3, groups=16), nn.Conv2d(16, 8, 1))
    x = torch.randn(2, 3, 12, 12)
    report = fxprune.prune(model.eval(), x, ratio=0.5, round_to=1)
    assert report.verified and model[0].out_channels == model[2].groups == model[2].out_channels == 8
