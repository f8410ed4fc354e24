"""Regressions found by the one-model-per-timm-family sweep (bench/timm_families.py), on tiny models."""

from __future__ import annotations

import pytest
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


class _ComputedQkvBias(nn.Module):
    """BEiT/EVA attention: ``F.linear`` with the qkv weight and a bias concatenated from q, zero k and v."""

    def __init__(self, dim: int = 16, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.embed = nn.Linear(8, dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.q_bias = nn.Parameter(torch.randn(dim))
        self.register_buffer("k_bias", torch.zeros(dim), persistent=False)
        self.v_bias = nn.Parameter(torch.randn(dim))
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.embed(x)
        b, n, _ = x.shape
        bias = torch.cat((self.q_bias, self.k_bias, self.v_bias))
        qkv = nn.functional.linear(x, weight=self.qkv.weight, bias=bias)
        q, k, v = qkv.reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        y = nn.functional.scaled_dot_product_attention(q, k, v, scale=0.35)  # fixed: pruning keeps it exact
        y = y.transpose(1, 2).reshape(b, n, -1)
        return self.head(x + self.proj(y))


def test_linear_with_a_computed_bias_prunes_its_rows_and_the_bias():
    torch.manual_seed(0)
    model, x = _ComputedQkvBias(), torch.randn(2, 5, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified
    assert model.qkv.weight.shape[0] < 48
    rows = model.qkv.weight.shape[0] // 3
    assert model.q_bias.shape[0] == model.k_bias.shape[0] == model.v_bias.shape[0] == rows
    assert model(x).shape == (2, 5, 4)


class _RmsNorm(nn.Module):
    """timm's RmsNorm: ``F.rms_norm`` with its own ``normalized_shape`` tuple (not an ``nn`` norm)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.normalized_shape = (dim,)
        self.weight = nn.Parameter(torch.rand(dim) + 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x, self.normalized_shape, self.weight, 1e-6)


class _RmsNormFp32(_RmsNorm):
    """timm's RmsNormFp32: the weight reaches ``F.rms_norm`` computed (cast to float32)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.rms_norm(x.float(), self.normalized_shape, self.weight.float(), 1e-6).to(x.dtype)


class _RmsMlp(nn.Module):
    def __init__(self, norm: nn.Module, dim: int = 16) -> None:
        super().__init__()
        self.fc1, self.norm, self.fc2 = nn.Linear(8, dim), norm, nn.Linear(dim, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.norm(self.fc1(x)))


@pytest.mark.parametrize(
    "norm", [_RmsNorm(16), _RmsNormFp32(16), nn.RMSNorm(16)], ids=["functional", "computed-weight", "module"]
)
def test_rms_norm_is_pruned_approximately_and_its_size_follows(norm):
    torch.manual_seed(0)
    model, x = _RmsMlp(norm), torch.randn(3, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.approx_groups  # channel-mixing, as LayerNorm
    assert model.fc1.out_features == 8 and model.norm.weight.shape == (8,)
    assert tuple(model.norm.normalized_shape) == (8,)
    assert model(x).shape == (3, 4)


class _ChannelRmsNorm(nn.Module):
    """MobileNetV5's RmsNorm2d written out: a mean over the channel dim, kept and broadcast back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        y = y * torch.rsqrt(y.pow(2).mean(1, keepdim=True) + 1e-6)
        return self.conv2(y)


def test_a_mean_over_channels_kept_as_a_dim_is_removed_approximately():
    torch.manual_seed(0)
    model, x = _ChannelRmsNorm(), torch.randn(2, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.approx_groups and report.approx_error is not None
    assert model.conv1.out_channels == 8 and model(x).shape == (2, 4, 8, 8)


def test_a_channel_sum_still_freezes():
    class ChannelSum(_ChannelRmsNorm):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            return self.conv2(y * y.sum(1, keepdim=True))

    model, x = ChannelSum(), torch.randn(2, 3, 8, 8)
    fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert model.conv1.out_channels == 16


class _SpatialAttention(nn.Module):
    """CBAM-style spatial attention (timm's CbamModule, CSATv2): channel mean and max, kept as dims."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(3, 16, 3, padding=1), nn.Conv2d(16, 4, 1)
        self.gate = nn.Conv2d(2, 1, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv1(x)
        stats = torch.cat([y.mean(dim=1, keepdim=True), y.amax(dim=1, keepdim=True)], dim=1)
        return self.conv2(y * self.gate(stats).sigmoid())


def test_a_channel_max_kept_as_a_dim_is_removed_approximately():
    torch.manual_seed(0)
    model, x = _SpatialAttention(), torch.randn(2, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.approx_groups
    assert model.conv1.out_channels == 8 and model(x).shape == (2, 4, 8, 8)


@pytest.mark.parametrize("branch", [False, True])
def test_a_norm_reads_its_dim_after_p(branch):
    class HeightNorm(_ChannelRmsNorm):  # L1 norm over the height: dim 2, given after p = 1
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv1(x)
            if branch and x.shape[-1] > 4:  # fx cannot trace this: captured by torch.export (aten norm)
                y = y + 1.0
            return self.conv2(y / (y.norm(1, 2, True) + 1.0))

    torch.manual_seed(0)
    model, x = HeightNorm(), torch.randn(2, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and not report.approx_groups  # channel by channel: exact
    assert model.conv1.out_channels == 8


class _Recurrent(nn.Module):
    """Sequencer2d's token mixing: a recurrent layer over the channels of a residual stream."""

    def __init__(self, cls: type, bidirectional: bool) -> None:
        super().__init__()
        self.fc1, self.head = nn.Linear(8, 16), nn.Linear(16, 4)
        self.rnn = cls(16, 12, batch_first=True, bidirectional=bidirectional)
        self.fc2 = nn.Linear(24 if bidirectional else 12, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.fc1(x)
        r, _ = self.rnn(y)
        return self.head(y + self.fc2(r))


@pytest.mark.parametrize("cls, bidirectional", [(nn.LSTM, True), (nn.GRU, False)])
def test_recurrent_layers_lose_input_channels(cls, bidirectional):
    torch.manual_seed(0)
    model, x = _Recurrent(cls, bidirectional).eval(), torch.randn(2, 5, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified and report.exact_error < 1e-5
    assert model.fc1.out_features == 8 and model.rnn.input_size == 8
    assert model.rnn.weight_ih_l0.shape[1] == 8 and model.rnn.weight_hh_l0.shape[1] == 12  # hidden units stay
    if bidirectional:
        assert model.rnn.weight_ih_l0_reverse.shape[1] == 8
    assert model(x).shape == (2, 5, 4)
