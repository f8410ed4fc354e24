"""Sizes shared by several tensors: one head-size attribute read by the q, k and v views, one key size
read by every head, chunk pieces added to each other's outputs. Their channels are tied so that they keep
one count (they used to freeze)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.measure import count_flops
from tests.helpers import small_edgenext


def _frozen(model: nn.Module, x: torch.Tensor, module: str) -> int:
    """Frozen output channels of ``module``'s weight."""
    a = fxprune.analyze(model, x)
    return sum(len(g.frozen) for g in a.groups if f"{module}.weight[0]" in g.members())


def _prune(model: nn.Module, x: torch.Tensor, **kw) -> float:
    dense = count_flops(model, x)
    report = fxprune.prune(model, x, 0.5, **kw)  # raises VerificationError if the slim model differs
    assert report.verified
    return count_flops(model, x) / dense


class _EfficientAttention(nn.Module):
    """Next-ViT's E-MHSA: one ``self.head_dim`` in the q, k and v views; the output reshaped to the
    input's width ``C``."""

    def __init__(self, dim: int = 64, head_dim: int = 16) -> None:
        super().__init__()
        self.num_heads, self.head_dim = dim // head_dim, head_dim
        self.q, self.k, self.v = nn.Linear(dim, dim), nn.Linear(dim, dim), nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        q = self.q(x).reshape(B, N, self.num_heads, self.head_dim).permute(0, 2, 1, 3)
        k = self.k(x).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        v = self.v(x).reshape(B, -1, self.num_heads, self.head_dim).transpose(1, 2)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class _Tokens(nn.Module):
    def __init__(self, mixer: nn.Module, dim: int = 64) -> None:
        super().__init__()
        self.embed, self.mixer, self.fc = nn.Linear(8, dim), mixer, nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 5)

    def forward(self, x):
        x = self.embed(x)
        x = x + self.mixer(x)
        return self.head(torch.relu(self.fc(x)) + x).mean(1)


def test_one_head_size_for_q_k_and_v_follows_pruning():
    torch.manual_seed(0)
    model, x = _Tokens(_EfficientAttention()).eval(), torch.randn(1, 10, 8)
    assert _frozen(model, x, "mixer.v") == 0 and _frozen(model, x, "mixer.q") == 0
    kept = _prune(model, x, round_to=1)
    attn = model.mixer
    assert attn.head_dim < 16 and attn.q.out_features == attn.v.out_features == attn.num_heads * attn.head_dim
    assert kept < 0.5


class _CascadedGroupAttention(nn.Module):
    """EfficientViT-M's cascaded group attention: chunk the input per head, add each head's output to the
    next head's piece, split every head's qkv with the same ``self.key_dim`` / ``self.val_dim``."""

    def __init__(self, dim: int = 48, heads: int = 3, key_dim: int = 8) -> None:
        super().__init__()
        self.key_dim, self.val_dim = key_dim, dim // heads
        self.qkvs = nn.ModuleList(
            nn.Conv2d(dim // heads, 2 * key_dim + self.val_dim, 1) for _ in range(heads)
        )
        self.proj = nn.Conv2d(self.val_dim * heads, dim, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        feats_in = x.chunk(len(self.qkvs), dim=1)
        feats_out, feat = [], feats_in[0]
        for i, qkv in enumerate(self.qkvs):
            if i > 0:
                feat = feat + feats_in[i]
            q, k, v = qkv(feat).view(B, -1, H, W).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
            attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(-1)
            feat = (v.flatten(2) @ attn.transpose(-2, -1)).view(B, self.val_dim, H, W)
            feats_out.append(feat)
        return self.proj(torch.relu(torch.cat(feats_out, 1)))


def test_one_key_size_read_by_every_head_follows_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 48, 3, padding=1), _CascadedGroupAttention(), nn.Conv2d(48, 4, 1)
    ).eval()
    x = torch.randn(1, 3, 6, 6)
    assert _frozen(model, x, "1.qkvs.0") == 0 and _frozen(model, x, "1.qkvs.2") == 0
    _prune(model, x, round_to=1)
    attn = model[1]
    assert attn.key_dim < 8 and all(q.out_channels == 2 * attn.key_dim + attn.val_dim for q in attn.qkvs)
    assert attn.val_dim < 16 and model[0].out_channels == 3 * attn.val_dim


class _SplitBlock(nn.Module):
    """EdgeNeXt's SplitTransposeBlock: ``chunk`` the channels, then add piece i to the output of piece
    i-1's depthwise conv; the last piece passes."""

    def __init__(self, dim: int = 48, scales: int = 3) -> None:
        super().__init__()
        width = dim // scales
        self.convs = nn.ModuleList(
            nn.Conv2d(width, width, 3, padding=1, groups=width) for _ in range(scales - 1)
        )
        self.pw = nn.Conv2d(dim, dim, 1)

    def forward(self, x):
        spx = x.chunk(len(self.convs) + 1, dim=1)
        spo, sp = [], spx[0]
        for i, conv in enumerate(self.convs):
            if i > 0:
                sp = sp + spx[i]
            sp = conv(sp)
            spo.append(sp)
        spo.append(spx[-1])
        return x + self.pw(torch.cat(spo, 1))


@pytest.mark.parametrize("round_to", [1, 8])
def test_chunk_pieces_added_to_each_other_follow_pruning(round_to):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), _SplitBlock(), _SplitBlock(), nn.Conv2d(48, 4, 1))
    model, x = model.eval(), torch.randn(1, 3, 8, 8)
    assert _frozen(model, x, "0") == 0
    kept = _prune(model, x, round_to=round_to)
    width = model[0].out_channels
    assert width < 48 and width % 3 == 0 and model[1].convs[0].out_channels == width // 3
    assert kept < 0.5


class _ChunkedHeads(nn.Module):
    """timm MaxViT (rw): ``view(B, -1, self.num_heads, self.dim_head * 3)`` then ``chunk(3)`` into q, k, v."""

    def __init__(self, dim: int = 32, dim_head: int = 8) -> None:
        super().__init__()
        self.num_heads, self.dim_head = dim // dim_head, dim_head
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        B, restore_shape = x.shape[0], x.shape[:-1]
        q, k, v = self.qkv(x).view(B, -1, self.num_heads, self.dim_head * 3).transpose(1, 2).chunk(3, dim=3)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(restore_shape + (-1,)))


def test_multiple_of_a_head_size_cut_by_chunk_follows_pruning():
    torch.manual_seed(0)
    model, x = _Tokens(_ChunkedHeads(), dim=32).eval(), torch.randn(1, 10, 8)
    assert _frozen(model, x, "mixer.qkv") == 0
    kept = _prune(model, x, round_to=1)
    attn = model.mixer
    assert attn.dim_head < 8 and attn.qkv.out_features == 3 * attn.num_heads * attn.dim_head
    assert kept < 0.5


class _MetaBiasAttention(nn.Module):
    """Swin V2-CR: cosine attention (whole heads go), a bias per head computed by an MLP from a buffer of
    relative coordinates (``meta_mlp(coords).transpose(1, 0).reshape(num_heads, N, N)``)."""

    def __init__(self, dim: int = 48, num_heads: int = 6, tokens: int = 9) -> None:
        super().__init__()
        self.num_heads, self.tokens = num_heads, tokens
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.meta_mlp = nn.Sequential(nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, num_heads))
        self.register_buffer("coords", torch.randn(tokens * tokens, 2))

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4).unbind(0)
        bias = self.meta_mlp(self.coords).transpose(1, 0).reshape(self.num_heads, self.tokens, self.tokens)
        attn = F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).transpose(-2, -1)  # cosine: whole heads
        attn = (attn + bias.unsqueeze(0)).softmax(-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, -1))


def test_rows_of_a_layer_fed_by_buffers_alone_take_no_part_in_alignment():
    """Six heads of 8 channels: at ``round_to=8`` the bias MLP's six rows (one per head) kept every head."""
    torch.manual_seed(0)
    model, x = _Tokens(_MetaBiasAttention(), dim=48).eval(), torch.randn(1, 9, 8)
    _prune(model, x)  # default alignment
    attn = model.mixer
    assert attn.num_heads == 3 and attn.meta_mlp[2].out_features == 3 and attn.qkv.out_features == 3 * 24


class _LevitAttention(nn.Module):
    """LeViT: q, k, v split from one ``view(B, N, heads, -1)`` by ``[key_dim, key_dim, val_dim]``; the
    output merges heads and values back with ``reshape(B, N, self.val_attn_dim)``."""

    def __init__(self, dim: int = 32, heads: int = 4, key_dim: int = 6, val_dim: int = 8) -> None:
        super().__init__()
        self.num_heads, self.key_dim, self.val_dim = heads, key_dim, val_dim
        self.val_attn_dim = heads * val_dim
        self.qkv = nn.Linear(dim, heads * (2 * key_dim + val_dim))
        self.proj = nn.Linear(self.val_attn_dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        qkv = self.qkv(x).view(B, N, self.num_heads, -1)
        q, k, v = qkv.split([self.key_dim, self.key_dim, self.val_dim], dim=3)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 3, 1), v.permute(0, 2, 1, 3)
        attn = (q @ k).softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(B, N, self.val_attn_dim))


def test_size_of_merged_heads_written_as_an_attribute_follows_pruning():
    torch.manual_seed(0)
    model, x = _Tokens(_LevitAttention(), dim=32).eval(), torch.randn(1, 10, 8)
    assert _frozen(model, x, "mixer.qkv") == 0
    _prune(model, x, round_to=1)
    attn = model.mixer
    assert attn.val_dim < 8 and attn.val_attn_dim == attn.num_heads * attn.val_dim == attn.proj.in_features


class _EqualKeyAndValue(nn.Module):
    """``split([self.key_dim, self.key_dim, self.val_dim])`` with ``key_dim == val_dim``: the values alone
    cannot say which attribute sizes which piece, the source can."""

    def __init__(self, dim: int = 24, key_dim: int = 8) -> None:
        super().__init__()
        self.key_dim = self.val_dim = key_dim
        self.qkv, self.proj = nn.Conv2d(dim, 3 * key_dim, 1), nn.Conv2d(key_dim, dim, 1)

    def forward(self, x):
        B, C, H, W = x.shape
        q, k, v = self.qkv(x).split([self.key_dim, self.key_dim, self.val_dim], dim=1)
        attn = (q.flatten(2).transpose(-2, -1) @ k.flatten(2)).softmax(-1)
        return self.proj((v.flatten(2) @ attn.transpose(-2, -1)).reshape(B, -1, H, W))


def test_split_sizes_of_equal_attributes_read_from_the_source_follow_pruning():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3, padding=1), _EqualKeyAndValue(), nn.Conv2d(24, 4, 1)).eval()
    x = torch.randn(1, 3, 6, 6)
    assert _frozen(model, x, "1.qkv") == 0
    _prune(model, x, round_to=1)
    attn = model[1]
    assert attn.key_dim < 8 and attn.val_dim < 8
    assert attn.qkv.out_channels == 2 * attn.key_dim + attn.val_dim and attn.proj.in_channels == attn.val_dim


def test_edgenext_chunks_of_unequal_sizes_crossed_by_whole_heads_verify():
    """EdgeNeXt with a stage of 80 channels: ``chunk(3)`` gives 27, 27, 26 while its cross-covariance
    attention removes whole heads of 10; the pieces share atoms but differ in length, so they keep their
    channels (the slim model used not to run)."""
    model = small_edgenext(dims=(16, 32, 80, 96), global_block_counts=(0, 1, 1, 1), depths=(1, 1, 2, 1))
    kept = _prune(model, torch.randn(1, 3, 64, 64), round_to=1)
    assert kept < 0.5 and model.stages[2].blocks[1].convs[0].out_channels == 27
