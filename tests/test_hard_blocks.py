"""Hand-written blocks with hard channel coupling, each pruned and checked end to end."""

from __future__ import annotations

import copy
import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.plan import Plan
from fxprune.verify import compare_outputs, masked_copy
from tests.helpers import check_pruned, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")


def cbr(cin: int, cout: int, k: int = 3, s: int = 1, g: int = 1) -> nn.Sequential:
    conv = nn.Conv2d(cin, cout, k, s, k // 2, groups=g, bias=False)
    return nn.Sequential(conv, nn.BatchNorm2d(cout), nn.ReLU())


def _prepare(model: nn.Module, seed: int = 0) -> nn.Module:
    return randomize_(model, seed).eval()


def _group_of(groups, module: str):
    hits = [g for g in groups if module in g.modules]
    assert hits, f"no group holds {module}"
    return hits


# ---------------------------------------------------------------- chunk / split / concat
class Bottleneck(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.cv1, self.cv2 = cbr(c, c), cbr(c, c)

    def forward(self, x):
        return x + self.cv2(self.cv1(x))


class C2fLike(nn.Module):
    """YOLOv8's C2f: ``list(x.chunk(2, 1))``, extend with bottlenecks on the last piece, concat."""

    def __init__(self, c: int = 32, n: int = 2):
        super().__init__()
        h = c // 2
        self.stem = cbr(3, c)
        self.cv1 = cbr(c, 2 * h, 1)
        self.m = nn.ModuleList(Bottleneck(h) for _ in range(n))
        self.cv2 = cbr((2 + n) * h, c, 1)
        self.head = nn.Conv2d(c, 8, 1)

    def forward(self, x):
        y = list(self.cv1(self.stem(x)).chunk(2, 1))
        y.extend(m(y[-1]) for m in self.m)
        return self.head(self.cv2(torch.cat(y, 1)))


class SplitMix(nn.Module):
    """``torch.split`` with computed equal sizes, a concat in a different order, and a sum of pieces."""

    def __init__(self, c: int = 32):
        super().__init__()
        self.stem = cbr(3, c)
        self.a, self.b = cbr(c // 2, c // 2), cbr(c // 2, c // 2)
        self.mix = cbr(c, c, 1)
        self.head = nn.Conv2d(c, 6, 1)

    def forward(self, x):
        x = self.stem(x)
        p, q = torch.split(x, x.shape[1] // 2, dim=1)
        y = torch.cat([self.b(q), self.a(p)], dim=1)
        return self.head(self.mix(y) + x)


@pytest.mark.parametrize("ratio", [0.3, 0.5, 0.7])
def test_c2f_chunk_keeps_equal_halves(ratio):
    model = _prepare(C2fLike())
    x = torch.randn(2, 3, 32, 32)
    # 16-channel halves lose 4.8 channels at ratio 0.3, less than one 8-channel step: no rounding here
    res = check_pruned(model, x, ratio, min_flops_ratio=1.4 if ratio >= 0.5 else 1.2, round_to=1)
    (g,) = [g for g in _group_of(res.groups, "cv1.0") if g.equal_parts]
    pieces = g.equal_parts[0]
    assert len(pieces) == 2
    removed = set(res.plan.remove[g.id].tolist())
    per_piece = [sum(int(i) in removed for i in p) for p in pieces]
    assert per_piece[0] == per_piece[1] > 0
    width = model.cv1[0].out_channels
    assert width % 2 == 0 and width < 32
    # both halves feed layers of the same width
    for blk in model.m:
        assert blk.cv1[0].in_channels == width // 2
    assert model.cv2[0].in_channels == (2 + len(model.m)) * (width // 2)


def test_split_reordered_concat_and_residual():
    model = _prepare(SplitMix())
    check_pruned(model, torch.randn(1, 3, 32, 32), 0.5, min_flops_ratio=1.5)
    assert model.stem[0].out_channels % 2 == 0
    assert model.a[0].in_channels == model.b[0].in_channels == model.stem[0].out_channels // 2


# ---------------------------------------------------------------- channel shuffle
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


def channel_shuffle_flatten(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.shape
    return x.reshape(b, groups, c // groups, h, w).transpose(1, 2).flatten(1, 2)


class ShuffleUnit(nn.Module):
    """ShuffleNetV2 unit (stride 1): chunk, a branch on one half, concat, channel shuffle."""

    def __init__(self, c: int, flatten: bool):
        super().__init__()
        h = c // 2
        self.branch = nn.Sequential(
            cbr(h, h, 1), nn.Conv2d(h, h, 3, 1, 1, groups=h, bias=False), nn.BatchNorm2d(h), cbr(h, h, 1)
        )
        self.shuffle = channel_shuffle_flatten if flatten else channel_shuffle

    def forward(self, x):
        x1, x2 = x.chunk(2, dim=1)
        return self.shuffle(torch.cat((x1, self.branch(x2)), dim=1), 2)


class ShuffleNet(nn.Module):
    def __init__(self, c: int = 32, flatten: bool = False):
        super().__init__()
        self.stem = cbr(3, c)
        self.units = nn.Sequential(ShuffleUnit(c, flatten), ShuffleUnit(c, flatten), ShuffleUnit(c, flatten))
        self.head = nn.Conv2d(c, 10, 1)

    def forward(self, x):
        return self.head(self.units(self.stem(x))).mean((2, 3))


@pytest.mark.parametrize("flatten", [False, True], ids=["view-transpose-view", "reshape-transpose-flatten"])
def test_shufflenet_unit(flatten):
    model = _prepare(ShuffleNet(flatten=flatten))
    check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, min_flops_ratio=1.3)
    # the pass-through halves are interleaved by the shuffle and re-split by the next chunk: the trunk
    # keeps its width (conservative), each branch's inner layers are pruned
    c = model.stem[0].out_channels
    assert c % 2 == 0
    for unit in model.units:
        assert unit.branch[0][0].in_channels == unit.branch[-1][0].out_channels == c // 2
        inner = unit.branch[0][0].out_channels
        assert inner < 16 and unit.branch[1].groups == unit.branch[1].in_channels == inner


# ---------------------------------------------------------------- squeeze-and-excitation
class SE(nn.Module):
    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.fc2 = nn.Conv2d(c, c // r, 1), nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = torch.sigmoid(self.fc2(F.relu(self.fc1(self.pool(x)))))
        return x * s


class SENet(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.stem, self.body, self.se = cbr(3, c), cbr(c, c), SE(c)
        self.fc = nn.Linear(c, 10)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.se(self.body(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def test_squeeze_excitation_gate():
    model = _prepare(SENet())
    check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, round_to=1, min_flops_ratio=1.5)
    c = model.stem[0].out_channels
    assert model.se.fc1.in_channels == model.se.fc2.out_channels == model.fc.in_features == c < 32
    assert model.se.fc1.out_channels < 8


# ---------------------------------------------------------------- channels-last block (ConvNeXt style)
class ChannelsLast(nn.Module):
    def __init__(self, c: int = 32):
        super().__init__()
        self.stem = nn.Conv2d(3, c, 3, padding=1)
        self.dw = nn.Conv2d(c, c, 7, padding=3, groups=c)
        self.norm = nn.LayerNorm(c)
        self.pw1, self.pw2 = nn.Linear(c, 4 * c), nn.Linear(4 * c, c)
        self.head = nn.Conv2d(c, 5, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.dw(x).permute(0, 2, 3, 1)
        y = self.pw2(F.gelu(self.pw1(self.norm(y))))
        return self.head(x + y.permute(0, 3, 1, 2))


def test_channels_last_layernorm_block():
    model = _prepare(ChannelsLast())
    x = torch.randn(1, 3, 24, 24)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    norm_groups = _group_of(analysis.groups, "norm")
    assert all(not g.exact for g in norm_groups)
    assert any(g.exact and g.prunable == 4 * 32 for g in analysis.groups if "pw2" in g.modules)
    res = check_pruned(model, x, 0.5, min_flops_ratio=1.5, expect_approx=True)
    # pruning under a LayerNorm changes its statistics: the output differs, but not wildly
    assert 1e-3 < res.report.approx_error < 1.0, res.report.approx_error
    assert model.pw1.out_features == model.pw2.in_features < 4 * 32
    assert model.norm.normalized_shape == (model.stem.out_channels,) == (model.pw2.out_features,)


def test_channels_last_ignoring_the_norm_keeps_it_exact():
    """With the LayerNorm ignored only the exact MLP-hidden group is pruned: no approximation."""
    model = _prepare(ChannelsLast())
    res = check_pruned(model, torch.randn(1, 3, 24, 24), 0.5, ignore=["norm"], min_flops_ratio=1.3,
                       expect_approx=False)
    assert res.zeroed_error is not None
    assert model.pw1.out_features == 64 and model.stem.out_channels == 32


def test_per_module_ratio_reaches_every_group_of_the_module():
    """``ratios={"pw1": r}`` applies to the groups of pw1's input and output channels alike."""
    model = _prepare(ChannelsLast())
    check_pruned(model, torch.randn(1, 3, 24, 24), 0.0, ratios={"pw1": 0.5}, min_flops_ratio=1.5,
                 expect_approx=True)
    assert model.pw1.out_features == 64 and model.pw1.in_features == 16


# ---------------------------------------------------------------- grouped and depthwise convs
class Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 32)
        self.grouped = cbr(32, 32, 3, g=4)  # groups=4
        self.dw2 = nn.Sequential(nn.Conv2d(32, 64, 3, 1, 1, groups=32, bias=False), nn.BatchNorm2d(64))
        self.pw = cbr(64, 24, 1)
        self.grouped_out = nn.Conv2d(24, 48, 1, groups=4)
        self.head = nn.Conv2d(48, 7, 1)

    def forward(self, x):
        return self.head(F.relu(self.grouped_out(self.pw(self.dw2(self.grouped(self.stem(x)))))))


@pytest.mark.parametrize("round_to", [1, 4])
def test_grouped_and_depthwise_multiplier(round_to):
    model = _prepare(Grouped())
    check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, min_flops_ratio=1.5, round_to=round_to)
    g = model.grouped[0]
    assert g.groups == 4 and g.in_channels % 4 == 0 and g.out_channels % 4 == 0
    assert g.weight.shape[1] * 4 == g.in_channels
    dw = model.dw2[0]
    assert dw.groups == dw.in_channels == g.out_channels
    assert dw.out_channels == 2 * dw.groups == dw.weight.shape[0]
    go = model.grouped_out
    assert go.groups == 4 and go.in_channels % 4 == 0 and go.out_channels % 4 == 0
    assert model.stem[0].out_channels < 32 or dw.groups < 32


# ---------------------------------------------------------------- U-Net decoder
class UNet(nn.Module):
    def __init__(self, c: int = 16):
        super().__init__()
        self.enc1, self.enc2 = cbr(3, c), cbr(c, 2 * c)
        self.bottom = cbr(2 * c, 4 * c)
        self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
        self.dec2 = cbr(4 * c, 2 * c)
        self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        self.dec1 = cbr(2 * c, c)
        self.out = nn.Conv2d(c, 3, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        b = self.bottom(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(b), e2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), e1], dim=1))
        return self.out(d1)


def test_unet_skip_concat_and_transposed_conv():
    model = _prepare(UNet())
    check_pruned(model, torch.randn(1, 3, 32, 32), 0.5, min_flops_ratio=2.5)
    assert model.dec2[0].in_channels == model.up2.out_channels + model.enc2[0].out_channels
    assert model.dec1[0].in_channels == model.up1.out_channels + model.enc1[0].out_channels
    assert model.up2.in_channels == model.bottom[0].out_channels < 64
    assert model.out.out_channels == 3


# ---------------------------------------------------------------- a module used twice, dict outputs
class SharedConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 24), cbr(3, 24, 5)
        self.shared = cbr(24, 32)
        self.head = nn.Conv2d(64, 4, 1)

    def forward(self, x):
        ya, yb = self.shared(self.a(x)), self.shared(self.b(x))
        return self.head(torch.cat([ya, yb], 1))


def test_module_used_twice():
    model = _prepare(SharedConv())
    check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, min_flops_ratio=2.0)
    assert model.a[0].out_channels == model.b[0].out_channels == model.shared[0].in_channels < 24
    assert model.head.in_channels == 2 * model.shared[0].out_channels


class DictHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16), cbr(16, 32, s=2), cbr(32, 32))
        self.cls = nn.Linear(32, 10)
        self.seg = nn.Conv2d(32, 3, 1)

    def forward(self, x):
        f = self.body(x)
        return {"logits": self.cls(f.mean((2, 3))), "mask": self.seg(f), "aux": [f[:, :1], f.sum(1)]}


def test_dict_and_nested_outputs():
    model = _prepare(DictHeads())
    res = check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, min_flops_ratio=1.5)
    assert set(res.slim_out) == {"logits", "mask", "aux"}
    assert res.slim_out["logits"].shape == (2, 10) and res.slim_out["mask"].shape == (2, 3, 16, 16)
    # the last feature map is a model output (sliced and summed): its channels cannot change
    assert model.body[2][0].out_channels == 32
    assert model.body[0][0].out_channels < 16


# ---------------------------------------------------------------- attention
class Attention(nn.Module):
    """timm-style attention; ``computed`` reads the head dim from ``x.shape`` (``C // heads``), otherwise
    the reshapes use -1 and ``flatten``."""

    def __init__(self, dim: int, heads: int, computed: bool = True):
        super().__init__()
        self.heads, self.computed = heads, computed
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, N, C = x.shape
        head_dim = C // self.heads if self.computed else -1
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q @ k.transpose(-2, -1)) * self.scale
        x = (attn.softmax(dim=-1) @ v).transpose(1, 2)
        x = x.reshape(B, N, C) if self.computed else x.flatten(2)
        return self.proj(x)


class TinyViT(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4, computed: bool = True):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 4, 4)
        self.attn = Attention(dim, heads, computed)
        self.fc1, self.fc2 = nn.Linear(dim, 2 * dim), nn.Linear(2 * dim, dim)
        self.head = nn.Linear(dim, 10)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = x + self.attn(x)
        x = x + self.fc2(F.gelu(self.fc1(x)))
        return self.head(x.mean(1))


def test_qkv_attention_with_head_dim_from_x_shape():
    """``C // heads`` read from the input: head channel ``d`` goes with channel ``d`` of every
    ``C // heads`` part of the embedding, so the embedding stays ``heads`` times the head dim."""
    model = _prepare(TinyViT(computed=True))
    x = torch.randn(2, 3, 32, 32)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    (emb,) = [g for g in analysis.groups if "attn.qkv" in g.modules and "patch" in g.modules]
    assert emb.prunable == 8 and emb.divisor == 4
    check_pruned(model, x, 0.5, min_flops_ratio=1.5)
    width = model.patch.out_channels
    assert width < 32 and width % 4 == 0
    assert model.attn.qkv.in_features == model.attn.proj.out_features == width
    assert model.attn.qkv.out_features == 3 * width and model.attn.proj.in_features == width
    assert model.fc1.out_features == model.fc2.in_features < 64


def test_qkv_attention_with_adaptive_head_dim():
    """With ``reshape(..., heads, -1)`` and ``flatten`` the head dim is pruned in all heads, q, k and v
    alike, independently of the embedding, which is pruned too."""
    model = _prepare(TinyViT(computed=False))
    check_pruned(model, torch.randn(2, 3, 32, 32), 0.5, min_flops_ratio=2.0)
    attn = model.attn
    head_dim = attn.proj.in_features // attn.heads
    assert attn.proj.in_features == attn.heads * head_dim and head_dim < 8
    assert attn.qkv.out_features == 3 * attn.heads * head_dim
    dim = model.patch.out_channels
    assert dim < 32 and attn.qkv.in_features == attn.proj.out_features == model.head.in_features == dim


# ---------------------------------------------------------------- flatten into linear, pixel shuffle, pad
class FlattenLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(cbr(3, 16, s=2), cbr(16, 32, s=2))
        self.fc = nn.Sequential(nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10))

    def forward(self, x):
        return self.fc(torch.flatten(self.body(x), 1))


def test_conv_flatten_into_linear():
    model = _prepare(FlattenLinear())
    check_pruned(model, torch.randn(2, 3, 16, 16), 0.5, min_flops_ratio=2.0)
    c = model.body[1][0].out_channels
    assert c < 32 and model.fc[0].in_features == c * 16
    assert model.fc[0].out_features < 64


class PixelShuffleNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = cbr(3, 16)
        self.expand = nn.Conv2d(16, 16 * 4, 3, padding=1)
        self.tail = cbr(16, 16)
        self.out = nn.Conv2d(16, 3, 3, padding=1)

    def forward(self, x):
        return self.out(self.tail(F.pixel_shuffle(self.expand(self.body(x)), 2)))


def test_pixel_shuffle():
    model = _prepare(PixelShuffleNet())
    check_pruned(model, torch.randn(1, 3, 16, 16), 0.5, min_flops_ratio=2.0)
    assert model.expand.out_channels == 4 * model.tail[0].in_channels
    assert model.tail[0].in_channels < 16


class PadShortcut(nn.Module):
    """CIFAR ResNet option-A shortcut: subsample and zero-pad the channels."""

    def __init__(self):
        super().__init__()
        self.stem = cbr(3, 16)
        self.conv1 = cbr(16, 32, s=2)
        self.conv2 = nn.Sequential(nn.Conv2d(32, 32, 3, 1, 1), nn.BatchNorm2d(32))
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        x = self.stem(x)
        short = F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, 8, 8), "constant", 0.0)
        y = F.relu(self.conv2(self.conv1(x)) + short)
        return self.head(y.mean((2, 3)))


def test_pad_on_channels_option_a():
    model = _prepare(PadShortcut())
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    (g,) = [g for g in analysis.groups if "conv2.0" in g.modules and "stem.0" in g.modules]
    # the padded zeros stay, the stem's channels may go
    assert g.width == 32 and len(g.frozen) == 16 and g.prunable == 16
    check_pruned(model, x, 0.5, min_flops_ratio=1.4)
    stem = model.stem[0].out_channels
    assert stem < 16
    assert model.conv2[0].out_channels == stem + 16


def test_pad_ratio_counts_prunable_channels():
    model = _prepare(PadShortcut())
    fxprune.prune(model, torch.randn(2, 3, 16, 16), 0.5)
    assert model.stem[0].out_channels == 8


# ---------------------------------------------------------------- constants and unknown ops
class ConstantReshape(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 32), cbr(32, 64)
        self.fc = nn.Linear(64, 10)

    def forward(self, x):
        y = self.b(self.a(x))
        y = y.view(y.size(0), 64, -1).mean(-1)  # 64 written as a literal
        return self.fc(y)


def test_hard_coded_reshape_constant_freezes_channels():
    model = _prepare(ConstantReshape())
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    (g,) = [g for g in analysis.groups if "b.1" in g.modules]
    assert g.width == 64 and g.prunable == 0 and any("constant" in r for r in g.frozen.values())
    check_pruned(model, x, 0.5, min_flops_ratio=1.5)
    assert model.b[0].out_channels == 64 and model.fc.in_features == 64
    assert model.a[0].out_channels < 32


class DistanceMix(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = cbr(3, 16), cbr(16, 24), cbr(16, 24)
        self.d = cbr(24, 24)
        self.fc = nn.Linear(24 * 24, 10)

    def forward(self, x):
        f = self.a(x)
        gram = torch.cdist(self.b(f).flatten(2), self.c(f).flatten(2))  # mixes two channel dims
        return self.fc(gram.flatten(1)) + self.d(self.b(f)).mean((1, 2, 3))[:, None]


def test_unknown_op_freezes_and_is_reported():
    model = _prepare(DistanceMix())
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    assert [u.op for u in analysis.unsupported] == ["cdist"]
    assert analysis.unsupported[0].reason
    for name in ("b.0", "c.0"):
        outputs = [g for g in analysis.groups if name in g.modules and g.width == 24]
        assert outputs and all(g.prunable == 0 for g in outputs), (name, outputs)
    check_pruned(model, x, 0.5, min_flops_ratio=1.1)
    assert model.b[0].out_channels == model.c[0].out_channels == 24
    assert model.a[0].out_channels < 16


class Opaque(nn.Module):
    """A layer the user declares as a leaf: the analysis cannot see inside."""

    def __init__(self, c: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c))

    def forward(self, x):
        return x * self.w.view(1, -1, 1, 1).flip(1)


class WithLeaf(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = cbr(3, 16), cbr(16, 32)
        self.opaque = Opaque(32)
        self.c = cbr(32, 32)
        self.head = nn.Conv2d(32, 4, 1)

    def forward(self, x):
        return self.head(self.c(self.opaque(self.b(self.a(x)))))


@pytest.mark.parametrize("leaf", ["opaque", Opaque], ids=["by-name", "by-type"])
def test_custom_leaf_module_is_frozen_and_reported(leaf):
    model = _prepare(WithLeaf())
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(copy.deepcopy(model), x, leaf_modules=[leaf])
    (u,) = analysis.unsupported
    assert u.module == "opaque" and "Opaque" in u.reason
    frozen = [g for g in analysis.groups if "b.0" in g.modules and g.width == 32]
    assert frozen and all(g.prunable == 0 for g in frozen)
    check_pruned(model, x, 0.5, min_flops_ratio=1.2, leaf_modules=[leaf])
    assert model.b[0].out_channels == 32 and model.opaque.w.numel() == 32
    assert model.a[0].out_channels < 16 and model.c[0].out_channels < 32


# ---------------------------------------------------------------- importance criteria on a hard block
def descending(model, group) -> np.ndarray:
    """A custom criterion: the first channels matter most."""
    return np.arange(group.width, 0, -1.0)


@pytest.mark.parametrize("importance", ["l1", "random", descending])
def test_importance_criteria(importance):
    model = _prepare(C2fLike(), seed=3)
    res = check_pruned(model, torch.randn(1, 3, 32, 32), 0.5, min_flops_ratio=1.4, importance=importance)
    if importance is not descending:
        return
    # the custom scores decide: in every group (in each chunk of a chunked one) the last channels go
    checked = 0
    for g in res.groups:
        removed = set(res.plan.remove.get(g.id, np.array([], dtype=int)).tolist())
        pieces = g.equal_parts[0] if g.equal_parts else [range(g.width)]
        for piece in pieces:
            piece = [int(i) for i in piece]
            gone = [i for i in piece if i in removed]
            assert gone == piece[len(piece) - len(gone):], (g.id, piece, gone)
            checked += bool(gone)
    assert checked >= 6


def _removed_atoms(analysis, plan) -> set[int]:
    return {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}


def test_verifier_catches_a_corrupted_weight():
    """The masked comparison is sensitive: a slim model with one wrong weight no longer matches."""
    model = _prepare(C2fLike())
    x = torch.randn(1, 3, 32, 32)
    reference = copy.deepcopy(model)
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5)
    fxprune.apply_plan(analysis, plan, x, verify=False)
    masked = masked_copy(reference, analysis.propagation.module_io, analysis.propagation.table,
                         _removed_atoms(analysis, plan))
    with torch.no_grad():
        err, problems = compare_outputs(masked(x), model(x))
        assert err <= 1e-4 and not problems
        unmasked_err, _ = compare_outputs(reference(x), model(x))
        assert unmasked_err > 1e-3  # the masking matters: the dense model computes something else
        model.m[0].cv2[0].weight[0, 0, 1, 1] += 0.5
        err, problems = compare_outputs(masked(x), model(x))
    assert not problems and err > 1e-3


def test_apply_plan_raises_on_a_corrupted_slim_model(monkeypatch):
    model = _prepare(C2fLike())
    x = torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    prune_module = importlib.import_module("fxprune.prune")
    original = prune_module.slim_model

    def slim_and_corrupt(m, groups, plan, *args):
        changes = original(m, groups, plan, *args)
        with torch.no_grad():
            m.cv2[0].weight[0, 0, 0, 0] += 1.0
        return changes

    monkeypatch.setattr(prune_module, "slim_model", slim_and_corrupt)
    with pytest.raises(fxprune.VerificationError, match="differs from the masked original"):
        fxprune.apply_plan(analysis, analysis.plan(0.5), x)


def test_apply_plan_raises_when_a_plan_changes_an_output():
    """A plan that removes frozen output channels is caught: the output shape would change."""
    model = _prepare(C2fLike())
    x = torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    (head,) = [g for g in analysis.groups if "head" in g.modules and g.width == 8]
    assert g_frozen_reason(head) == "model output"
    with pytest.raises(fxprune.VerificationError, match="shape"):
        fxprune.apply_plan(analysis, Plan({head.id: np.array([0, 3])}), x)


def g_frozen_reason(g) -> str:
    return sorted(set(g.frozen.values()))[0]
