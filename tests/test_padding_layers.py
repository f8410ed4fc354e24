"""Padding layers (``nn.ZeroPad2d`` before a depthwise conv, as in timm's CPU-bone) pass channels."""

from __future__ import annotations

import pytest
import torch
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
