"""The fast paths of prune() compute what the straightforward ones compute.

Masks built once per layer call against masks recomputed from the union-find; masking in place against a
masked deep copy; FLOPs counted on the verification passes against separate counts; the array union-find
against a scalar one. A corrupted slim model is still caught on the approximate (LayerNorm) path.
"""

from __future__ import annotations

import contextlib
import copy
import importlib

import numpy as np
import pytest
import torch
import torchvision.models as tvm
from torch import nn

import fxprune
from fxprune.groups.slots import SlotTable
from fxprune.measure import count_flops
from fxprune.verify import MaskSet, compare_outputs, masked, masked_copy, masking, removed_slots
from tests.helpers import randomize_


class Block(nn.Module):
    def __init__(self, d: int = 32, heads: int = 4):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.fc1, self.fc2 = nn.Linear(d, 2 * d), nn.Linear(2 * d, d)

    def forward(self, x):
        h = self.norm(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.fc2(torch.relu(self.fc1(self.norm(x))))


class TinyTransformer(nn.Module):
    """Shared LayerNorm (called twice per block), attention heads, a residual stream: the approximate path."""

    def __init__(self, d: int = 32):
        super().__init__()
        self.embed = nn.Conv2d(3, d, 4, 4)
        self.blocks = nn.Sequential(Block(d), Block(d))
        self.head = nn.Linear(d, 10)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2)
        return self.head(self.blocks(x).mean(1))


MODELS = {
    "resnet18": (lambda: tvm.resnet18(num_classes=10), (1, 3, 32, 32)),
    "mobilenet_v3_small": (lambda: tvm.mobilenet_v3_small(num_classes=10), (1, 3, 32, 32)),
    "densenet121": (lambda: tvm.densenet121(num_classes=10), (1, 3, 32, 32)),
    "transformer": (TinyTransformer, (2, 3, 16, 16)),
}


def _setup(name: str, ratio: float = 0.5):
    factory, shape = MODELS[name]
    model = randomize_(factory().eval())
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(ratio)
    removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    return model, x, analysis, plan, removed


def _slow_keep(table: SlotTable, lab, removed: set[int]) -> np.ndarray:
    """The mask as the original verifier computed it: roots looked up one by one, then ``isin``."""
    roots = np.array([table.find(int(s)) for s in np.asarray(lab).ravel()], dtype=np.int64)
    return ~np.isin(roots, list(removed))


def _assert_same_masks(labels, masks, table, removed) -> int:
    if isinstance(labels, dict):
        expected = {d: _slow_keep(table, lab, removed) for d, lab in labels.items()}
        expected = {d: k for d, k in expected.items() if not k.all()}
        got = dict(masks or [])
        assert sorted(got) == sorted(expected)
        for d, keep in expected.items():
            assert torch.equal(got[d], torch.as_tensor(keep, dtype=torch.float32))
        return len(expected)
    if isinstance(labels, (list, tuple)):
        subs = masks if masks is not None else [None] * len(labels)
        return sum(_assert_same_masks(lab, m, table, removed) for lab, m in zip(labels, subs))
    return 0


@pytest.mark.parametrize("name", sorted(MODELS))
def test_masks_built_once_equal_masks_recomputed_per_call(name):
    _, _, analysis, _, removed = _setup(name)
    prop = analysis.propagation
    masks = MaskSet(prop.module_io, prop.table, removed, prop.table.blocks)
    compared = 0
    for module, calls in prop.module_io.items():
        per_call = masks.calls.get(module, [(None, None)] * len(calls))
        for (in_labels, out_labels), (in_masks, out_masks) in zip(calls, per_call):
            if isinstance(in_labels, (list, tuple)):
                compared += _assert_same_masks(in_labels, in_masks, prop.table, removed)
            compared += _assert_same_masks(out_labels, out_masks, prop.table, removed)
    assert compared > 0
    gone = removed_slots(prop.table, removed)
    for b in prop.table.blocks:
        assert np.array_equal(gone[b.slots], ~_slow_keep(prop.table, b.slots, removed))


@pytest.mark.parametrize("name", ["resnet18", "transformer"])
def test_masking_in_place_matches_a_masked_copy_and_restores_the_model(name):
    model, x, analysis, _, removed = _setup(name)
    prop = analysis.propagation
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with torch.no_grad():
        dense = model(x)
        copied = masked_copy(model, prop.module_io, prop.table, removed, prop.table.blocks)(x)
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks) as m:
            in_place = m(x)
        after = model(x)
    assert compare_outputs(copied, in_place) == (0.0, [])
    assert compare_outputs(dense, in_place)[0] > 1e-3  # the masks do something
    assert torch.equal(dense, after)  # hooks removed, zeroed rows restored
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


class ShiftBetweenLayers(nn.Module):
    """A conv output shifted in place before the next conv: its removed channels turn non-zero."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 16, 3), nn.Conv2d(16, 8, 3)

    def forward(self, x):
        y = self.a(x)
        y += 1.0  # the same tensor object reaches b's input hook, changed
        return self.b(y)


class ActivationBetweenLayers(nn.Module):
    """conv -> activation -> conv: with f(0) != 0 the activation's output must be masked again."""

    def __init__(self, act: nn.Module):
        super().__init__()
        self.a, self.act, self.b = nn.Conv2d(3, 16, 3), act, nn.Conv2d(16, 8, 3)

    def forward(self, x):
        return self.b(self.act(self.a(x)))


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "shift", "hardsigmoid", "silu"])
def test_inputs_masked_once_match_inputs_masked_at_every_layer(name, monkeypatch):
    """Skipping a layer input the previous layer's hook masked, or the output of an activation with
    f(0) = 0 whose input was masked, changes nothing, in-place ops included."""
    if name in ("shift", "hardsigmoid", "silu"):
        acts = {"hardsigmoid": nn.Hardsigmoid, "silu": nn.SiLU}
        small = ShiftBetweenLayers() if name == "shift" else ActivationBetweenLayers(acts[name]())
        model, x = randomize_(small.eval()), torch.randn(1, 3, 12, 12)
        analysis = fxprune.analyze(model, x)
        plan = analysis.plan(0.5, round_to=1)
        removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    else:
        model, x, analysis, _, removed = _setup(name)
    assert removed
    prop = analysis.propagation
    with torch.no_grad():
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks) as m:
            once = m(x)
        monkeypatch.setattr(masking.MaskedTensors, "done", lambda self, value, masks: False)
        monkeypatch.setattr(masking, "_zero_where_input_zero", lambda *args: False)
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks) as m:
            every = m(x)
        dense = model(x)
    assert torch.equal(once, every)
    assert compare_outputs(dense, once)[0] > 1e-3


def test_masking_in_place_restores_the_model_when_the_forward_fails():
    model, x, analysis, _, removed = _setup("transformer")
    prop = analysis.propagation
    before = {n: t.clone() for n, t in model.state_dict().items()}
    with pytest.raises(RuntimeError), torch.no_grad():
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks) as m:
            m(torch.randn(2, 5, 16, 16))  # wrong channel count
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


def test_block_rows_are_zeroed_where_no_hook_covers_them():
    """Attention heads live inside one layer: their parameter rows must be zeroed, not skipped."""
    _, _, analysis, _, removed = _setup("transformer")
    prop = analysis.propagation
    masks = MaskSet(prop.module_io, prop.table, removed, prop.table.blocks)
    zeroed = {name for b, _ in masks.block_rows for name, _ in b.members}
    assert any("in_proj_weight" in name for name in zeroed)
    assert not any(name.endswith("fc1.weight") for name in zeroed)  # its output hook zeroes those


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "transformer"])
def test_flops_counted_on_verification_passes_equal_separate_counts(name):
    model, x, analysis, plan, _ = _setup(name)
    dense = count_flops(model, x)
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.verified and report.flops_before == dense
    assert report.flops_after == count_flops(model, x) < dense
    assert {"masked reference", "slim", "verify"} <= set(report.timings)


def test_flops_fall_back_to_a_separate_count_when_the_pass_counter_fails(monkeypatch):
    model, x, analysis, plan, _ = _setup("resnet18")
    dense = count_flops(model, x)
    prune_module = importlib.import_module("fxprune.prune")

    class NoCostTable:  # as for a model analysed on fake or real tensors: the passes are counted
        exact = False

        def __init__(self, analysis):
            pass

        def fits(self, example_inputs):
            return False

    @contextlib.contextmanager
    def broken_counter():
        raise AssertionError("Expected gradient function to be set")
        yield

    monkeypatch.setattr(prune_module, "PlanCosts", NoCostTable)
    monkeypatch.setattr(prune_module, "flop_counter", broken_counter)
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.verified and report.flops_before == dense and report.flops_after == count_flops(model, x)


def test_corrupted_slim_model_is_caught_on_the_approximate_path(monkeypatch):
    model, x, analysis, plan, _ = _setup("transformer")
    assert any(not g.exact and g.id in plan.remove for g in analysis.groups)
    prune_module = importlib.import_module("fxprune.prune")
    original = prune_module.slim_model

    def slim_and_corrupt(m, groups, plan, *args):
        changes = original(m, groups, plan, *args)
        with torch.no_grad():
            m.blocks[0].fc1.weight[0, 0] += 1.0
        return changes

    monkeypatch.setattr(prune_module, "slim_model", slim_and_corrupt)
    with pytest.raises(fxprune.VerificationError, match="differs from the masked original"):
        fxprune.apply_plan(analysis, plan, x)


def test_approximate_path_reports_both_errors_and_keeps_the_model_usable():
    model, x, analysis, plan, _ = _setup("transformer")
    reference = copy.deepcopy(model)
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.approx_groups and report.exact_error <= 1e-4 and report.approx_error is not None
    with torch.no_grad():
        assert model(x).shape == reference(x).shape


class ScalarUnionFind:
    """The straightforward union-find: one pair at a time, the smaller root wins, flags follow it."""

    def __init__(self, n: int):
        self.parent, self.frozen, self.approx = list(range(n)), {}, {}

    def find(self, x: int) -> int:
        while self.parent[x] != x:
            x = self.parent[x]
        return x

    def union(self, a, b) -> None:
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            ra, rb = sorted((self.find(x), self.find(y)))
            if ra != rb:
                self.parent[rb] = ra
                for flags in (self.frozen, self.approx):
                    if rb in flags:
                        flags.setdefault(ra, flags.pop(rb))

    def flag(self, flags: dict, slots, reason: str) -> None:
        for s in np.asarray(slots).ravel().tolist():
            flags.setdefault(self.find(s), reason)


@pytest.mark.parametrize("seed", range(6))
def test_array_union_find_matches_the_scalar_one(seed):
    rng = np.random.default_rng(seed)
    n = 300
    fast, slow = SlotTable(), ScalarUnionFind(n)
    fast.new(n)
    for step in range(60):
        kind = rng.integers(5)
        k = int(rng.integers(1, 12))
        a, b = rng.integers(0, n, k), rng.integers(0, n, k)
        if kind == 0:
            fast.freeze(a, f"frozen {step}")
            slow.flag(slow.frozen, a, f"frozen {step}")
        elif kind == 1:
            fast.mark_approx(a, f"approx {step}")
            slow.flag(slow.approx, a, f"approx {step}")
        elif kind == 2:
            fast.union(a[:1], b)  # broadcast
            slow.union(a[:1], b)
        else:
            fast.union(a, b)
            slow.union(a, b)
    roots = fast.roots(np.arange(n))
    assert roots.tolist() == [slow.find(i) for i in range(n)]
    assert fast.frozen == slow.frozen and fast.approx == slow.approx


def _partition_atom_by_atom(group) -> list[np.ndarray]:
    """Atoms grouped by the blocks that hold them, one atom at a time (reference for the array version)."""
    signature: list[list[int]] = [[] for _ in range(group.width)]
    for k, b in enumerate(group.blocks):
        if b.passive or b.base not in group.block_atom_index:
            continue
        idx = group.block_atom_index[b.base]
        for i in sorted(set(idx[idx >= 0].tolist())):
            signature[i].append(k)
    parts: dict[tuple[int, ...], list[int]] = {}
    for i, sig in enumerate(signature):
        parts.setdefault(tuple(sig), []).append(i)
    return [np.asarray(p) for p in parts.values()]


def test_segments_by_arrays_match_segments_atom_by_atom():
    from fxprune.plan.segments import Segments, _partition

    model = randomize_(tvm.googlenet(num_classes=10, aux_logits=False, init_weights=False).eval())
    analysis = fxprune.analyze(model, torch.randn(1, 3, 64, 64))
    scores = analysis.scores()
    several = 0
    for g in analysis.groups:
        got, expected = _partition(g), _partition_atom_by_atom(g)
        assert len(got) == len(expected) and all(np.array_equal(a, b) for a, b in zip(got, expected))
        seg = Segments.of(g, scores[g.id])
        if seg is not None:
            several += 1
            removed = seg.removal_at(0.5, 8, 1)
            gone = set(removed.tolist())
            assert seg.counts_of(removed) == [sum(int(i) in gone for i in unit[0]) for unit in seg.units]
            assert not gone & set(g.frozen)
    assert several > 0  # googlenet's inception outputs concatenate several layers


@pytest.mark.parametrize(
    "a, b",
    [((2, 8, 5, 5), (1, 8, 1, 1)), ((8, 1, 1), (2, 8, 4, 4)), ((3, 4), 2.0), (1, (3, 4)), ((6,), (6,))],
)
def test_meta_arithmetic_from_shapes_matches_the_op(a, b):
    from fxprune.groups.propagate import _BINARY, _broadcast_like

    make = lambda v: torch.empty(v, device="meta") if isinstance(v, tuple) else v  # noqa: E731
    args = (make(a), make(b))
    for op in _BINARY:
        got, expected = _broadcast_like(args), op(*args)
        assert got.shape == expected.shape and got.dtype == expected.dtype and got.device == expected.device
    assert _broadcast_like((torch.empty(3, device="meta"), torch.empty(4, device="meta"))) is None
    assert _broadcast_like((torch.empty(3, 4, device="meta").t(), 1.0)) is None  # strided: the op decides


def test_atom_places_match_a_dict_built_atom_by_atom():
    from fxprune.groups.grouping import AtomPlaces

    model = randomize_(tvm.shufflenet_v2_x0_5(num_classes=10).eval())
    analysis = fxprune.analyze(model, torch.randn(1, 3, 64, 64))
    groups, n = analysis.groups, len(analysis.propagation.table)
    expected = {r: (g, i) for g in groups for i, r in enumerate(g.atoms.tolist())}
    places = AtomPlaces(groups, n)
    assert len(places) == len(expected) and sorted(places) == sorted(expected)
    for r, (g, i) in expected.items():
        got = places[r]
        assert got[0] is g and got[1] == i and places.get(r) == (g, i)
    missing = next(r for r in range(n) if r not in expected)
    assert missing not in places and places.get(missing) is None and places.get(n + 5) is None
