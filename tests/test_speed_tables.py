"""One walk of the module tree per call: the cached tables list what ``nn.Module``'s walks list."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from fxprune.capture.modules import distinct_modules, module_table, named_modules, named_tensors
from fxprune.importance.magnitude import magnitude_scores


class Tied(nn.Module):
    """Shared module, tied weight, a None buffer slot and a plain buffer."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(4, 4)
        self.b = nn.Linear(4, 4)
        self.b.weight = self.a.weight
        self.c = self.a
        self.body = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Sequential(self.b))
        self.register_buffer("none", None)
        self.register_buffer("scale", torch.ones(4))


def _walks(m: nn.Module) -> dict:
    return {
        "modules": [(n, id(x)) for n, x in m.named_modules(remove_duplicate=False)],
        "all": [(n, id(t)) for n, t in [*m.named_parameters(remove_duplicate=False),
                                         *m.named_buffers(remove_duplicate=False)]],
        "once": [(n, id(t)) for n, t in [*m.named_parameters(), *m.named_buffers()]],
        "params": [(n, id(t)) for n, t in m.named_parameters()],
        "distinct": [id(x) for x in m.modules()],
    }


def _tables(m: nn.Module) -> dict:
    return {
        "modules": [(n, id(x)) for n, x in named_modules(m).items()],
        "all": [(n, id(t)) for n, t in named_tensors(m)],
        "once": [(n, id(t)) for n, t in named_tensors(m, remove_duplicate=True)],
        "params": [(n, id(t)) for n, t in named_tensors(m, buffers=False, remove_duplicate=True)],
        "distinct": [id(x) for x in distinct_modules(m)],
    }


@pytest.mark.parametrize("cached", [False, True])
def test_tables_list_what_module_walks_list(cached: bool) -> None:
    m = Tied()
    if cached:
        with module_table(m):
            assert _tables(m) == _walks(m)
    else:
        assert _tables(m) == _walks(m)


def test_cached_table_sees_replaced_tensors_and_is_dropped_after() -> None:
    m = Tied()
    with module_table(m):
        m.body[0].weight = nn.Parameter(torch.zeros(2, 3, 3, 3))  # slimming replaces tensors in place
        names = dict(named_tensors(m))
        assert names["body.0.weight"] is m.body[0].weight
        with module_table(m):  # nested: same table
            assert named_modules(m) is named_modules(m)
    m.extra = nn.Linear(2, 2)  # after the block the tree is walked again
    assert "extra" in named_modules(m)


def test_magnitude_scores_same_with_and_without_one_parameter_table() -> None:
    import fxprune

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 8, 3)).eval()
    analysis = fxprune.analyze(model, torch.randn(1, 3, 16, 16))
    inside = analysis.scores("l2")  # one parameter table for the pass
    for g in analysis.groups:
        alone = magnitude_scores(model, g, 2, mean=True)  # names resolved one by one
        np.testing.assert_array_equal(inside[g.id], alone)
    assert any(np.ptp(s) > 0 for s in inside.values())


def _random_unions(table, rng: np.random.Generator) -> None:
    """Blocks of fresh slots coupled to older slots, as layers do, with freezes and approximate marks."""
    table.new(int(rng.integers(1, 8)))
    for _ in range(40):
        n = int(rng.integers(1, 6))
        old = rng.integers(0, len(table), size=n)
        fresh = table.new(n)
        kind = rng.integers(0, 6)
        if kind == 0:
            table.freeze(fresh[:1], f"frozen {len(table)}")
        elif kind == 1:
            table.mark_approx(old[:1], f"approx {len(table)}")
        if kind == 2:
            table.union(fresh, old[::-1])  # fresh on the left
        elif kind == 3:
            table.union(old[:1], fresh)  # one old channel owns them all (depthwise)
        elif kind == 4:
            a, b = rng.integers(0, len(table), size=(2, n))
            table.union(a, b)  # anything
        else:
            table.union(old, fresh)


def test_union_onto_fresh_slots_same_classes_and_reasons(monkeypatch) -> None:
    from fxprune.groups.slots import SlotTable

    for seed in range(300):
        fast, slow = SlotTable(), SlotTable()
        _random_unions(fast, np.random.default_rng(seed))
        with monkeypatch.context() as m:
            m.setattr(SlotTable, "_onto_fresh", lambda self, old, fresh: False)
            _random_unions(slow, np.random.default_rng(seed))
        np.testing.assert_array_equal(fast.all_roots(), slow.all_roots())
        assert fast.frozen == slow.frozen and fast.approx == slow.approx
