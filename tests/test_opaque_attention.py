"""Attention inside functions that tracing keeps whole: torchvision's Swin (v1 and v2) loses whole heads."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import fxprune

swin = pytest.importorskip("torchvision.models.swin_transformer")


def tiny_swin(v2: bool, norm: bool = True) -> nn.Module:
    """A three-stage Swin (3, 6, 12 heads of 16 channels); ``norm=False`` replaces its LayerNorms."""
    torch.manual_seed(0)
    kw = {"block": swin.SwinTransformerBlockV2, "downsample_layer": swin.PatchMergingV2} if v2 else {}
    if not norm:
        kw["norm_layer"] = lambda _: nn.Identity()  # removal is then exact: the verification covers it
    model = swin.SwinTransformer([4, 4], 48, [2, 2, 2], [3, 6, 12], [4, 4], num_classes=10, **kw).eval()
    for m in _attentions(model).values():
        nn.init.normal_(m.qkv.bias)  # distinct per head (they start at zero)
    return model


def _attentions(model: nn.Module) -> dict[str, nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, swin.ShiftedWindowAttention)}


def _kept_heads(dense: nn.Module, slim: nn.Module) -> list[int]:
    """Which dense heads the slim module kept, found by matching each slim head's qkv bias."""
    nh, hd = dense.num_heads, dense.qkv.weight.shape[1] // dense.num_heads
    before = dense.qkv.bias.detach().reshape(3, nh, hd)
    after = slim.qkv.bias.detach().reshape(3, slim.num_heads, hd)
    kept = []
    for h in range(slim.num_heads):
        hits = [k for k in range(nh) if torch.equal(before[:, k], after[:, h])]
        assert len(hits) == 1, f"slim head {h} is not one dense head"
        kept.append(hits[0])
    return kept


@pytest.mark.parametrize("v2", [False, True], ids=["v1", "v2"])
def test_swin_loses_whole_heads_exactly(v2, single_thread):
    model = tiny_swin(v2, norm=False)
    dense = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    keep_bias_mlp = ["*.cpb_mlp.0"] if v2 else []  # hidden units stay: per-head rows compare whole
    report = fxprune.prune(model, x, ratio=0.5, round_to=1, ignore=keep_bias_mlp)
    assert report.exact_error is not None and report.exact_error < 1e-4
    assert not report.approx_groups  # no LayerNorm: every removal was checked exactly
    assert report.flops_after / report.flops_before < 0.4
    dense_attn, slim_attn = _attentions(dense), _attentions(model)
    for name, m in slim_attn.items():
        d = dense_attn[name]
        hd = d.qkv.weight.shape[1] // d.num_heads
        assert 0 < m.num_heads < d.num_heads
        assert m.qkv.weight.shape == (3 * m.num_heads * hd, m.num_heads * hd)  # head size unchanged
        kept = _kept_heads(d, m)
        cols = torch.cat([torch.arange(h * hd, (h + 1) * hd) for h in kept])
        w = d.qkv.weight.detach().reshape(3, d.num_heads, hd, -1)[:, kept][..., cols]
        assert torch.equal(w.reshape(m.qkv.weight.shape), m.qkv.weight.detach())
        assert torch.equal(d.proj.weight.detach()[cols][:, cols], m.proj.weight.detach())
        if v2:
            assert torch.equal(d.logit_scale.detach()[kept], m.logit_scale.detach())
            assert torch.equal(d.cpb_mlp[2].weight.detach()[kept], m.cpb_mlp[2].weight.detach())
        else:
            table = d.relative_position_bias_table.detach()[:, kept]
            assert torch.equal(table, m.relative_position_bias_table.detach())
    assert model(x).shape == (2, 10)


def test_swin_heads_follow_the_residual_stream():
    """With LayerNorms the residual groups are approximate; the stage's heads are their atoms."""
    model = tiny_swin(v2=False)
    x = torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    assert not analysis.unsupported
    residual = [g for g in analysis.groups if any(m.endswith("attn.qkv") for m in g.modules)]
    assert sorted(g.width for g in residual) == [3, 6, 12]
    assert all(not g.exact and g.prunable == g.width for g in residual)
    report = fxprune.prune(model, x, ratio=0.5)
    assert report.approx_groups and report.flops_after / report.flops_before < 0.45


def test_v2_bias_layer_is_not_aligned():
    """v2's bias MLP has one row per head: round_to aligns the channels, not the head count."""
    model = tiny_swin(v2=True, norm=False)
    fxprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, round_to=8)
    heads = [m.num_heads for m in _attentions(model).values()]
    assert heads == [2, 2, 3, 3, 6, 6]


def shifted_window_attention(x: torch.Tensor) -> torch.Tensor:
    """Same name as torchvision's function, other semantics: it must stay unknown."""
    return x.flip(-1)


torch.fx.wrap("shifted_window_attention")


class _Lookalike(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(8, 8), nn.Linear(8, 8)

    def forward(self, x):
        return self.b(shifted_window_attention(self.a(x)))


def test_function_of_the_same_name_stays_unknown():
    analysis = fxprune.analyze(_Lookalike(), torch.randn(2, 8))
    assert [u.op for u in analysis.unsupported] == ["shifted_window_attention"]
    assert all(g.prunable == 0 for g in analysis.groups)


def tiny_maxvit(norm: bool = True) -> nn.Module:
    """A two-stage MaxViT (2 and 4 heads of 16 channels); ``norm=False`` replaces its LayerNorms."""
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    torch.manual_seed(0)
    model = maxvit.MaxVit(
        input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[32, 64], block_layers=[1, 1],
        head_dim=16, stochastic_depth_prob=0.0, num_classes=10,
    ).eval()
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if not norm and isinstance(child, nn.LayerNorm):
                setattr(parent, name, nn.Identity())
    return model


def test_maxvit_loses_whole_heads_exactly(single_thread):
    """q, k, v reshaped with ``self.n_heads``, einsum products, a gathered relative-position table."""
    maxvit = pytest.importorskip("torchvision.models.maxvit")
    model = tiny_maxvit(norm=False)
    dense = copy.deepcopy(model)
    x = torch.randn(2, 3, 64, 64)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.exact_error is not None and not report.approx_groups
    assert report.flops_after / report.flops_before < 0.5
    kind = maxvit.RelativePositionalMultiHeadAttention
    before = {n: m for n, m in dense.named_modules() if isinstance(m, kind)}
    for name, m in model.named_modules():
        if not isinstance(m, kind):
            continue
        d = before[name]
        assert m.n_heads == d.n_heads // 2 and m.head_dim == d.head_dim
        assert m.to_qkv.out_features == 3 * m.n_heads * m.head_dim
        table = d.relative_position_bias_table.detach()
        kept = [k for k in range(d.n_heads) for c in m.relative_position_bias_table.detach().T
                if torch.equal(table[:, k], c)]
        assert len(kept) == m.n_heads


class _EinsumPair(nn.Module):
    def __init__(self, fixed: bool):
        super().__init__()
        self.fixed = fixed
        self.a, self.b, self.out = nn.Linear(8, 6), nn.Linear(8, 6), nn.Linear(5, 4)

    def forward(self, x):
        other = torch.ones(2, 5, 6) if self.fixed else self.b(x)
        return self.out(torch.einsum("b n c, b m c -> b n m", self.a(x), other).transpose(1, 2)[..., :5])


@pytest.mark.parametrize("fixed", [False, True], ids=["two-layers", "fixed-operand"])
def test_einsum_couples_contracted_channels(fixed):
    analysis = fxprune.analyze(_EinsumPair(fixed), torch.randn(2, 5, 8))
    group = next(g for g in analysis.groups if "a" in g.modules and g.width == 6)
    if fixed:
        assert group.prunable == 0  # the constant operand cannot lose its channels
    else:
        assert sorted(group.modules) == ["a", "b"] and group.prunable == 6


def test_timm_attention_loses_head_channels(single_thread):
    """timm's Attention: ``reshape(B, N, 3, self.num_heads, self.head_dim)``, ``self.attn_dim`` out: the
    head size follows (sdpa's default scale folded into the q rows of ``qkv``), the heads stay."""
    vit = pytest.importorskip("timm.models.vision_transformer")
    torch.manual_seed(0)
    model = vit.VisionTransformer(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                  num_classes=10)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1, ignore=["blocks.*.mlp", "patch_embed"])
    assert report.exact_error is not None and not report.approx_groups  # head channels: removal is exact
    for block in model.blocks:
        attn = block.attn
        assert attn.num_heads == 4 and attn.head_dim == 8 and attn.attn_dim == 32
        assert attn.qkv.out_features == 96 and attn.proj.in_features == 32
    assert model(x).shape == (2, 10)
