"""Symbolic tracing where Python control flow reads sizes from the example inputs.

``if H % self.window:``, ``int(N ** 0.5)`` or ``torch.autocast(x.device.type)`` on a traced value stop
``torch.fx``; the capture used to fall back to ``torch.export``, whose graphs hold every view size as a
number, so attention q/k/v (and widths their head size is read from) froze. Traced with sizes from the
example inputs, the head size stays a node computed from the width, and the width is pruned.
"""

from __future__ import annotations

import math
import operator

import pytest
import torch
import torch.fx as fx
from torch import nn

import fxprune
from fxprune.capture import CaptureError, capture


class _WindowAttention(nn.Module):
    """Attention over windows, padded when the size needs it; the head size read from the width."""

    def __init__(self, dim: int, num_heads: int, window: int) -> None:
        super().__init__()
        self.num_heads, self.window = num_heads, window
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.bias_cache: dict[str, torch.Tensor] = {}  # filled from a traced value while tracing
        self.rel_bias = nn.Parameter(torch.zeros(num_heads, 1, 1))

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        B, N, C = x.shape
        side = int(math.sqrt(N))  # int() of a traced size
        x = x.view(B, side, side, C)
        pad = (self.window - side % self.window) % self.window
        if pad > 0:  # control flow on a size
            x = nn.functional.pad(x, (0, 0, 0, pad, 0, pad))
        if mask is not None:  # a default argument the inputs leave out
            x = x * mask
        H = W = side + pad
        w = self.window
        x = x.view(B, H // w, w, W // w, w, C).transpose(2, 3).reshape(-1, w * w, C)
        key = str(x.device)
        if key not in self.bias_cache:
            self.bias_cache[key] = self.rel_bias * 1.0
        qkv = self.qkv(x).reshape(x.shape[0], w * w, 3, self.num_heads, C // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        with torch.autocast(device_type=x.device.type, enabled=False):  # reads a device type
            attn = (q @ k.transpose(-2, -1) * 0.25 + self.bias_cache[key]).softmax(dim=-1)
        x = (attn @ v).transpose(1, 2).reshape(B, H // w, W // w, w, w, C).transpose(2, 3).reshape(B, H, W, C)
        return self.proj(x[:, :side, :side].reshape(B, N, C))


class _Net(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, window: int = 3) -> None:
        super().__init__()
        self.embed = nn.Conv2d(3, dim, 4, 4)
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = _WindowAttention(dim, heads, window)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x).flatten(2).transpose(1, 2)
        x = x + self.attn(self.norm1(x))
        x = x + self.fc2(torch.relu(self.fc1(self.norm2(x))))
        return self.head(x.mean(1))


def _no_proxies(model: nn.Module) -> bool:
    for m in model.modules():
        for v in vars(m).values():
            values = list(v.values()) if isinstance(v, dict) else v if isinstance(v, list) else [v]
            if any(isinstance(u, fx.Proxy) for u in values):
                return False
    return True


def test_control_flow_on_sizes_is_traced_on_the_inputs_and_leaves_the_model_as_it_was():
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 16, 16)
    expected = model(x)
    model.attn.bias_cache.clear()
    captured = capture(model, x)
    assert captured.method == "fx-inputs"
    assert _no_proxies(model) and not model.attn.bias_cache  # the cache filled while tracing is emptied
    floordivs = [n for n in captured.graph_module.graph.nodes if n.target is operator.floordiv]
    assert floordivs  # C // self.num_heads stays a node computed from the width
    torch.testing.assert_close(captured.graph_module(x), expected)
    torch.testing.assert_close(model(x), expected)


def test_head_size_read_from_the_width_follows_it():
    """Exported, the width froze (the head size was a number); traced on the inputs' sizes it is pruned."""
    torch.manual_seed(0)
    model, x = _Net().eval(), torch.randn(2, 3, 16, 16)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    assert model.embed.out_channels == 16 and model.attn.qkv.out_features == 48
    assert report.flops_after / report.flops_before < 0.4
    assert model(x).shape == (2, 10)


class _Written(nn.Module):
    """An in-place write to a region (MViTv2 adds relative positions to ``attn[:, :, 1:, 1:]``)."""

    def __init__(self, some_channels: bool) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 16, 3, padding=1)
        self.head = nn.Linear(16, 10)
        self.some_channels = some_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        if y.shape[-1] > 4:  # control flow on a size
            y = torch.relu(y)
        z = self.conv2(y)
        z[:, :, 1:, 1:] = z[:, :, 1:, 1:] * 0.5 + y[:, :, 1:, 1:]  # every channel: they follow
        if self.some_channels:
            z[:, :4] = y[:, 4:8]  # four channels written: they stay
        return self.head(z.mean((2, 3)))


@pytest.mark.parametrize("some_channels", [False, True])
def test_in_place_writes_are_traced_and_the_prune_verifies(some_channels):
    torch.manual_seed(0)
    model, x = _Written(some_channels).eval(), torch.randn(2, 3, 8, 8)
    assert capture(model, x).method == "fx-inputs"
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    assert model(x).shape == (2, 10)
    assert model.conv2.out_channels == (16 if some_channels else 8)


class _Factory(nn.Module):
    """``torch.ones(B, N)`` with traced sizes (Gemma 4's default patch mask)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 16, 3), nn.Linear(16, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x).flatten(2).transpose(1, 2)
        B, N, _ = y.shape
        valid = torch.ones(B, N, dtype=y.dtype, device=y.device)
        return self.head((y * valid[..., None]).mean(1))


def test_factory_calls_with_traced_sizes_are_recorded():
    ones = torch.ones
    torch.manual_seed(0)
    model, x = _Factory().eval(), torch.randn(2, 3, 8, 8)
    captured = capture(model, x)
    assert captured.method == "fx-inputs" and torch.ones is ones
    assert any(n.target is ones for n in captured.graph_module.graph.nodes)
    torch.testing.assert_close(captured.graph_module(x), model(x))
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and model.conv.out_channels == 8


def test_data_dependent_control_flow_still_stops_the_trace():
    class _Data(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            return y if y.sum() > 0 else -y  # tensor contents: not decided from the inputs' sizes

    model, x = _Data().eval(), torch.randn(1, 3, 8, 8)
    with pytest.raises(CaptureError) as info:
        capture(model, x)
    assert "y.sum() > 0" in (info.value.op or "")  # the error still points at the model's line


@pytest.mark.parametrize(
    "name, kwargs, size",
    [
        ("twins_svt_small", {"embed_dims": (16, 32, 64, 128), "depths": (1,) * 4, "num_heads": (1, 2, 4, 8)},
         64),
        ("nest", {"embed_dims": (32, 64, 128), "depths": (1, 1, 1), "num_heads": (1, 2, 4)}, 64),
    ],
)
def test_timm_models_with_size_control_flow_prune_their_widths(single_thread, name, kwargs, size):
    """Twins (padding branch in its attention) and NesT (``int(math.sqrt(T))``), small: widths pruned."""
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    if name == "nest":
        model = timm.models.nest.Nest(img_size=size, num_classes=10, **kwargs).eval()
    else:
        model = timm.create_model(name, num_classes=10, img_size=size, **kwargs).eval()
    x = torch.randn(1, 3, size, size)
    assert fxprune.analyze(model, x).captured.method == "fx-inputs"
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-4
    assert report.flops_after / report.flops_before < 0.4
