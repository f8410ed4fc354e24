"""``outputs=``: only the selected outputs of a model are its interface; the others may change width."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import fxprune


class TwoOutputs(nn.Module):
    """Returns predictions and, like a detection head in training, the feature map it read."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.body = nn.Conv2d(16, 32, 3, padding=1)
        self.head = nn.Conv2d(32, 5, 1)

    def forward(self, x):
        feats = torch.relu(self.body(torch.relu(self.stem(x))))
        return {"pred": self.head(feats), "feats": [feats]}


def _prunable(analysis, module: str) -> int:
    return sum(g.prunable for g in analysis.groups if g.modules and g.modules[0] == module)


def test_unselected_output_is_pruned_and_selected_output_kept():
    x = torch.randn(1, 3, 16, 16)
    model = TwoOutputs().eval()
    frozen = fxprune.analyze(model, x)
    assert _prunable(frozen, "body") == 0  # returned as an output: frozen by default
    select = lambda out: out["pred"]  # noqa: E731
    free = fxprune.analyze(model, x, outputs=select)
    assert _prunable(free, "body") > 0
    assert any("interface: 1 of 2" in n for n in free.captured.notes)
    reference = model(x)["pred"]
    report = fxprune.prune(model, x, 0.5, outputs=select, importance="l1")
    out = model(x)
    assert out["pred"].shape == reference.shape
    assert out["feats"][0].shape[1] < 32
    assert report.exact_error is not None and report.exact_error < 1e-4


def test_pruner_takes_the_selector():
    x = torch.randn(1, 3, 16, 16)
    model = TwoOutputs()
    pruner = fxprune.Pruner(model, x, "l1", 0.5, outputs=lambda out: [out["pred"]])
    pruner.prune()
    assert model.body.out_channels < 32


@pytest.mark.parametrize(
    "select, message",
    [(lambda out: [], "picked no tensor"), (lambda out: out["missing"], "selector failed")],
)
def test_bad_selector_is_one_clear_error(select, message):
    with pytest.raises(ValueError, match=message):
        fxprune.analyze(TwoOutputs(), torch.randn(1, 3, 16, 16), outputs=select)
