"""Unit tests of the channel-group pieces: label algebra, the slot union-find and the extension hooks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fxprune
from fxprune.groups.channel_constants import register_channel_constant
from fxprune.groups.elementwise import passthrough
from fxprune.groups.labels import broadcast_labels, permute_labels, reshape_labels
from fxprune.groups.registry import handles_ops, layer_args, register_module_handler, register_op_handler
from fxprune.groups.slots import SlotTable

pytestmark = pytest.mark.usefixtures("single_thread")


def same_class(table: SlotTable, a, b) -> bool:
    return bool(np.array_equal(table.roots(np.asarray(a)), table.roots(np.asarray(b))))


def is_frozen(table: SlotTable, slots) -> bool:
    return all(int(r) in table.frozen for r in table.roots(np.asarray(slots)).ravel())


# ---------------------------------------------------------------- slot union-find
def test_union_find_classes_and_smallest_root():
    t = SlotTable()
    a, b = t.new(3), t.new(3)
    t.union(b, a)
    assert list(t.roots(b)) == list(a)  # the representative is the smallest slot of the class
    c = t.new(1)
    t.union(c, a[1:2])  # broadcast: one slot joins one class
    assert t.find(int(c[0])) == a[1]
    assert not same_class(t, a[:1], a[1:2])
    t.union_all(a)
    assert len(set(t.roots(np.concatenate([a, b, c])).tolist())) == 1


def test_flags_follow_the_union():
    t = SlotTable()
    a, b, c = t.new(2), t.new(2), t.new(2)
    t.freeze(b[:1], "kept")
    t.mark_approx(c[1:], "mixing")
    t.union(a, b)
    t.union(a, c)
    assert t.frozen[t.find(int(a[0]))] == "kept" and t.find(int(a[1])) not in t.frozen
    assert t.approx[t.find(int(a[1]))] == "mixing" and t.find(int(a[0])) not in t.approx
    fresh = t.freeze_new(3, "padding")
    assert len(fresh) == 3 and is_frozen(t, fresh) and len(t) == 9


def test_blocks_are_reused_and_shared_members_couple():
    t = SlotTable()
    w = t.block("conv", (("conv.weight", 0), ("conv.bias", 0)), 4)
    assert np.array_equal(t.block("conv", (("conv.weight", 0), ("conv.bias", 0)), 4), w)
    # a block with a member already covered (a parameter read by get_attr) is coupled to it
    other = t.block("conv", (("conv.weight", 0),), 4, passive=True)
    assert not np.array_equal(other, w) and same_class(t, other, w)
    with pytest.raises(ValueError, match="size 5 differs"):
        t.block("conv", (("conv.weight", 0),), 5)
    blk = next(b for b in t.blocks if np.array_equal(b.slots, other))
    assert blk.passive
    t.block("layer", (("conv.weight", 0),), 4)  # used by a layer: no longer passive
    assert not blk.passive and blk.module == "layer"


# ---------------------------------------------------------------- label algebra
def test_flatten_keeps_channel_identity():
    t = SlotTable()
    ch = t.new(4)
    out = reshape_labels(t, (2, 4, 2, 3), {1: ch}, (2, 24), None, "flatten")
    assert list(out) == [1] and np.array_equal(out[1], np.repeat(ch, 6))
    assert not t.frozen


def test_head_split_keeps_the_adaptive_factor_and_couples_the_heads():
    t = SlotTable()
    ch = t.new(6)
    # (B, N, 6) -> (B, N, heads=2, head_dim=-1): the constant head count couples the heads
    out = reshape_labels(t, (1, 5, 6), {2: ch}, (1, 5, 2, 3), [True, True, False, True], "heads")
    assert list(out) == [3] and same_class(t, out[3], ch[:3]) and same_class(t, ch[:3], ch[3:])
    assert not same_class(t, ch[:1], ch[1:2]) and not t.frozen


@pytest.mark.parametrize(
    "in_shape, labels_at, out_shape, adaptive, reason",
    [
        ((2, 6), [1], (2, 6), [True, False], "channel size written as a constant"),
        ((1, 6), [1], (1, 2, 3), [True, False, False], "channel dim split with constant sizes"),
        ((2, 4, 3), [1, 2], (2, 12), None, "reshape mixes two channel dims"),
        ((2, 4, 3), [1], (2, 12), [True, False], "flattened size written as a constant"),
        ((2, 6, 3), [1], (2, 3, 6), None, "reshape mixes channels with other dims"),
    ],
)
def test_reshapes_that_freeze(in_shape, labels_at, out_shape, adaptive, reason):
    t = SlotTable()
    labels = {d: t.new(in_shape[d]) for d in labels_at}
    out = reshape_labels(t, in_shape, labels, out_shape, adaptive, "here")
    assert out == {}
    for lab in labels.values():
        assert is_frozen(t, lab) and t.frozen[t.find(int(lab[0]))] == f"here: {reason}"


def test_broadcast_couples_operands_and_freezes_blockers():
    t = SlotTable()
    a, b, c = t.new(4), t.new(4), t.new(4)
    out = broadcast_labels(t, [((1, 4, 8), {1: a}), ((4, 1), {0: b})], (1, 4, 8))
    assert list(out) == [1] and same_class(t, out[1], b) and not t.frozen
    # a full-size operand without labels (a constant) keeps the channels
    broadcast_labels(t, [((4,), {0: c}), ((4,), None)], (4,))
    assert is_frozen(t, c) and not is_frozen(t, a)
    # a labeled dim of size 1 broadcast against a wider one is frozen
    one = t.new(1)
    broadcast_labels(t, [((1, 3), {0: one}), ((5, 3), None)], (5, 3))
    assert is_frozen(t, one)


def test_permute_moves_labels_with_their_dims():
    a, b = np.arange(3), np.arange(3, 8)
    assert permute_labels({1: a, 3: b}, [0, 2, 3, 1]) == {3: a, 2: b}
    assert permute_labels({0: a}, [-1, 0]) == {1: a}


# ---------------------------------------------------------------- extension hooks
@torch.fx.wrap
def units_gate(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


@torch.fx.wrap
def units_gate_decorated(x: torch.Tensor) -> torch.Tensor:
    return x * torch.sigmoid(x)


class GateModule(nn.Module):
    def forward(self, x):
        return x * torch.sigmoid(x)


class Block(nn.Module):
    def __init__(self, gate):
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.gate = gate
        self.b = nn.Conv2d(16, 8, 3, padding=1)

    def forward(self, x):
        return self.b(self.gate(self.a(x)))


class FunctionGate(nn.Module):
    """Calls one of the wrapped functions, which tracing records as a single call."""

    def __init__(self, decorated: bool):
        super().__init__()
        self.decorated = decorated

    def forward(self, x):
        return units_gate_decorated(x) if self.decorated else units_gate(x)


def _hidden_group(analysis):
    """The group of conv ``a``'s output channels."""
    (group,) = [g for g in analysis.groups if "a.weight[0]" in g.members()]
    return group


@pytest.mark.parametrize("op", ["register", "decorator"])
def test_registered_op_handler_is_used(op):
    fn = units_gate if op == "register" else units_gate_decorated
    model = Block(FunctionGate(decorated=op == "decorator")).eval()
    x = torch.randn(1, 3, 8, 8)
    before = fxprune.analyze(model, x)
    assert [u.op for u in before.unsupported] == [fn.__name__] and _hidden_group(before).prunable == 0
    if op == "register":
        register_op_handler(fn.__name__, passthrough)
    else:
        handles_ops(fn.__name__)(passthrough)
    after = fxprune.analyze(model, x)
    assert not after.unsupported and _hidden_group(after).prunable == 16
    fxprune.prune(model, x, 0.5)  # verified against the masked original
    assert model.a.out_channels == 8 and model.b.in_channels == 8


def test_registered_module_handler_is_used():
    model = Block(GateModule()).eval()
    x = torch.randn(1, 3, 8, 8)
    before = fxprune.analyze(model, x, leaf_modules=[GateModule])
    assert [u.module for u in before.unsupported] == ["gate"] and _hidden_group(before).prunable == 0
    register_module_handler(GateModule, lambda ctx, m: passthrough(ctx))
    after = fxprune.analyze(model, x, leaf_modules=[GateModule])
    assert not after.unsupported and _hidden_group(after).prunable == 16


class WidthInForward(nn.Module):
    """Writes its channel count as a Python constant in forward (as torchvision's ViT does).

    The count comes through a method, so forward's source does not name the attribute.
    """

    def __init__(self):
        super().__init__()
        self.width = 12
        self.conv = nn.Conv2d(3, self.width, 3, padding=1)
        self.fc = nn.Linear(self.width, 5)

    def forward(self, x):
        y = self.conv(x).reshape(x.shape[0], self.channels(), -1).mean(-1)
        return self.fc(y)

    def channels(self) -> int:
        return self.width


def test_registered_channel_constant_follows_the_pruned_width():
    model = WidthInForward().eval()
    x = torch.randn(2, 3, 6, 6)
    before = fxprune.analyze(model, x)
    assert _conv_group(before).prunable == 0 and not before.constants
    register_channel_constant(WidthInForward, "width")
    after = fxprune.analyze(model, x)
    assert _conv_group(after).prunable == 12
    assert [(c.module, c.attr) for c in after.constants] == [("", "width")]
    fxprune.prune(model, x, 0.5, round_to=1)
    assert model.width == model.conv.out_channels == model.fc.in_features == 6


def _conv_group(analysis):
    (group,) = [g for g in analysis.groups if "conv.weight[0]" in g.members()]
    return group


class EmbeddingBranch(nn.Module):
    """Iterates over a tensor: symbolic tracing fails, so the analysis runs on the exported aten graph."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(50, 16)
        self.fc1 = nn.Linear(16, 32)
        self.fc2 = nn.Linear(32, 4)

    def forward(self, idx):
        h = torch.stack([t * 2.0 for t in self.emb(idx)])
        return self.fc2(torch.relu(self.fc1(h)))


def test_exported_layer_ops_come_from_the_registry():
    assert layer_args("embedding").weight == 0 and layer_args("embedding").input == 1
    assert layer_args("conv2d").weight == 1 and layer_args("relu") is None
    model = EmbeddingBranch().eval()
    idx = torch.randint(0, 50, (2, 7))
    analysis = fxprune.analyze(model, idx)
    assert analysis.captured.method == "export"
    # the embedding's own call is recorded with the indices as its input, not the table
    (call,) = analysis.propagation.module_io["emb"]
    in_labels, out_labels = call
    assert not any(isinstance(v, np.ndarray) for v in (in_labels[0] or {}).values())
    assert list(out_labels) == [2] and len(out_labels[2]) == 16
    fxprune.prune(model, idx, 0.5)
    assert model.emb.embedding_dim == model.fc1.in_features == 8


class _ResizedPositions(nn.Module):
    """A learned position map resized to the input (NaFlexViT), in a model torch.export captures."""

    def __init__(self, mode: str, antialias: bool) -> None:
        super().__init__()
        self.c1, self.c2 = nn.Conv2d(3, 16, 1), nn.Conv2d(16, 4, 1)
        self.pos = nn.Parameter(torch.randn(1, 16, 4, 4))
        self.mode, self.antialias = mode, antialias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.stack([t + 1.0 for t in self.c1(x)])  # only torch.export: the aten graph has the upsample
        pos = nn.functional.interpolate(self.pos, size=y.shape[-2:], mode=self.mode, antialias=self.antialias)
        return self.c2(y + pos)


@pytest.mark.parametrize("mode, antialias", [("nearest-exact", False), ("bilinear", False)])
def test_exported_resizes_keep_channels(mode, antialias):
    torch.manual_seed(0)
    model, x = _ResizedPositions(mode, antialias), torch.randn(2, 3, 8, 8)
    report = fxprune.prune(model, x, ratio=0.5, round_to=1)
    assert report.verified
    assert model.c1.out_channels == 8 and model.pos.shape == (1, 8, 4, 4) and model(x).shape == (2, 4, 8, 8)
