"""The masked pass leaves out the masks of a layer whose only use is a batch norm masked the same way.

A batch norm's output channel depends on that channel of its input alone, so the masked original's output
is the same with or without those masks. These tests compare both, and check that the skip is refused
where it would change the output (a second use of the layer's output) or is not known to be safe (training).
"""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune
from fxprune.verify import compare_outputs, masked, masking
from tests.helpers import randomize_


class Net(nn.Module):
    def __init__(self, second_use: bool = False) -> None:
        super().__init__()
        self.second_use = second_use
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.conv = nn.Conv2d(16, 16, 3, padding=1)
        self.norm = nn.BatchNorm2d(16)
        self.head = nn.Conv2d(16, 8, 1)

    def forward(self, x):
        x = self.stem(x)
        y = self.conv(x)
        z = torch.relu(self.norm(y))
        out = self.head(z)
        return out + y.sum(1, keepdim=True) if self.second_use else out  # a sum over the channels


def _masked_outputs(model, x):
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5, round_to=1)
    removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    assert removed
    prop, graph = analysis.propagation, analysis.captured.graph_module.graph
    with torch.no_grad():
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks, graph) as m:
            skipping = m(x)
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks) as m:
            every = m(x)
        dense = model(x)
    masks = masking.MaskSet(prop.module_io, prop.table, removed, prop.table.blocks, graph)
    return skipping, every, dense, masks.channelwise_next


@pytest.mark.parametrize("name", ["net", "resnet18", "mobilenet_v3_small"])
def test_skipped_masks_before_batch_norms_change_nothing(name: str) -> None:
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = {"net": Net, "resnet18": tvm.resnet18, "mobilenet_v3_small": tvm.mobilenet_v3_small}[name]()
    model, x = randomize_(model.eval()), torch.randn(1, 3, 32, 32)
    skipping, every, dense, pairs = _masked_outputs(model, x)
    assert pairs  # some layer feeds a batch norm only
    assert torch.equal(skipping, every)
    assert compare_outputs(dense, every)[0] > 1e-3  # the masks do change the output


def test_no_skip_for_a_second_use_or_training_batch_norm() -> None:
    torch.manual_seed(0)
    model, x = randomize_(Net(second_use=True).eval()), torch.randn(1, 3, 16, 16)
    skipping, every, _, pairs = _masked_outputs(model, x)
    assert "conv" not in pairs and torch.equal(skipping, every)
    model = randomize_(Net().eval())
    model.norm.train()  # batch statistics: still per channel, but the mode gate refuses it
    analysis = fxprune.analyze(Net().eval(), x)
    prop = analysis.propagation
    plan = analysis.plan(0.5, round_to=1)
    removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    masks = masking.MaskSet(prop.module_io, prop.table, removed, prop.table.blocks,
                            analysis.captured.graph_module.graph)
    handles = masks.attach(model)
    try:
        assert model.conv._forward_hooks  # the layer keeps its output mask
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("corrupt", ["kept", "removed"])
def test_verification_still_fails_on_a_wrong_slim_model(corrupt: str, monkeypatch) -> None:
    """With the skipped masks, ``prune`` still compares the slim model with the masked original: a kept
    weight changed after slimming fails it; a channel left in place where it should be gone too."""
    import importlib

    prune_module = importlib.import_module("fxprune.prune")
    original = prune_module.slim_model

    def slim_wrongly(m, groups, plan, *args):
        if corrupt == "removed":  # slim nothing of the conv: its removed channels stay and reach the output
            plan = type(plan)({gid: idx for gid, idx in plan.remove.items()
                               if not any(mod == "conv" for g in groups if g.id == gid for mod in g.modules)})
        changes = original(m, groups, plan, *args)
        if corrupt == "kept":
            with torch.no_grad():
                m.conv.weight[0, 0] += 1.0
        return changes

    torch.manual_seed(0)
    model, x = randomize_(Net().eval()), torch.randn(1, 3, 16, 16)
    monkeypatch.setattr(prune_module, "slim_model", slim_wrongly)
    with pytest.raises(fxprune.VerificationError):
        fxprune.prune(model, x, 0.5, round_to=1)


@pytest.mark.parametrize("name", ["net", "mobilenet_v3_small"])
def test_batch_norm_rows_folded_give_the_same_output_and_are_put_back(name: str, monkeypatch) -> None:
    """Zeroing a batch norm's removed weight and bias rows instead of multiplying its output by the mask:
    the same masked output, and every parameter restored afterwards."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = {"net": Net, "mobilenet_v3_small": tvm.mobilenet_v3_small}[name]()
    model, x = randomize_(model.eval()), torch.randn(1, 3, 32, 32)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5, round_to=1)
    removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    prop, graph = analysis.propagation, analysis.captured.graph_module.graph
    folds = []
    real = masking.MaskSet.fold_norms
    def record(self, m):
        folds.append(real(self, m))
        return folds[-1]

    monkeypatch.setattr(masking.MaskSet, "fold_norms", record)
    with torch.no_grad():
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks, graph) as m:
            folded = m(x)
        monkeypatch.setattr(masking.MaskSet, "fold_norms", lambda self, m: (set(), []))
        with masked(model, prop.module_io, prop.table, removed, prop.table.blocks, graph) as m:
            multiplied = m(x)
    assert folds and folds[0][0]  # some batch norms were folded
    assert torch.equal(folded, multiplied)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())


def test_batch_norm_in_training_mode_is_not_folded() -> None:
    torch.manual_seed(0)
    model, x = randomize_(Net().eval()), torch.randn(1, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5, round_to=1)
    removed = {int(r) for g in analysis.groups if g.id in plan.remove for r in g.atoms[plan.remove[g.id]]}
    prop = analysis.propagation
    masks = masking.MaskSet(prop.module_io, prop.table, removed, prop.table.blocks)
    before = {n: t.clone() for n, t in model.state_dict().items()}
    folded, saved = masks.fold_norms(model)
    assert not torch.equal(model.norm.weight, before["norm.weight"])  # removed rows zeroed
    masking.put_back(saved)
    assert all(torch.equal(before[n], t) for n, t in model.state_dict().items())
    assert "norm" in folded
    model.norm.train()
    folded, _ = masks.fold_norms(model)
    assert "norm" not in folded
