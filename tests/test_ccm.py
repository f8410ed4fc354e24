"""CCM: the correlation loss, widths from the channels' information, and the slim model."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import fxprune
from fxprune.regularize.ccm import ccm_term
from tests.small_task import SmallResNet, Task, train

pytestmark = pytest.mark.usefixtures("single_thread")

X = torch.randn(1, 3, 16, 16)


def test_ccm_term_hand_computed() -> None:
    # batch-averaged channels: a = [1,2,3,4], b = 2a (r = 1), c = [1,0,1,2] (r(a, c) = 2 / sqrt(10)), dead
    mean = torch.tensor([[1.0, 2, 3, 4], [2, 4, 6, 8], [1, 0, 1, 2], [0, 0, 0, 0]]).view(4, 2, 2)
    noise = torch.randn(4, 2, 2)
    fmap = torch.stack([mean + noise, mean - noise])  # the batch mean is exactly ``mean``
    r = 2 / math.sqrt(10)
    expected = (3 + 2 * 1 + 4 * r) / 16  # diagonal of the 3 live channels, r(a,b) twice, four r entries
    assert ccm_term(fmap).item() == pytest.approx(expected, rel=1e-5)


def test_penalty_is_minus_lam_times_the_watched_maps() -> None:
    torch.manual_seed(0)
    model = SmallResNet()
    pruner = fxprune.Pruner(model, X, "ccm", scope="restricted", lam=0.3, steps=5)
    seen = []
    handles = [
        model.get_submodule(f"layer{s}.{b}.conv2").register_forward_pre_hook(lambda m, a: seen.append(a[0]))
        for s in (1, 2)
        for b in (0, 1)
    ]
    x = torch.randn(8, 3, 16, 16)
    model(x)
    expected = -0.3 * sum(ccm_term(f) for f in seen)
    penalty = pruner.penalty()
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-5)
    penalty.backward()
    assert model.layer1[0].conv1.weight.grad.abs().sum() > 0
    assert pruner.penalty().item() == 0.0  # the terms are consumed: nothing kept across iterations
    for h in handles:
        h.remove()


class TwoBranches(nn.Module):
    """Two convs read the image; ``dup`` has 4 distinct filters each used twice, ``ind`` 8 random ones."""

    def __init__(self) -> None:
        super().__init__()
        self.dup = nn.Conv2d(3, 8, 3, padding=1)
        self.ind = nn.Conv2d(3, 8, 3, padding=1)
        self.head_dup = nn.Conv2d(8, 4, 1)
        self.head_ind = nn.Conv2d(8, 4, 1)
        with torch.no_grad():
            self.dup.weight[4:] = self.dup.weight[:4]
            self.dup.bias[4:] = self.dup.bias[:4]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head_dup(torch.relu(self.dup(x))) + self.head_ind(torch.relu(self.ind(x)))


@pytest.mark.parametrize("criterion", ["nuclear", "variance"])
def test_duplicated_channels_get_a_narrower_width(criterion: str) -> None:
    torch.manual_seed(0)
    model = TwoBranches()
    batches = [torch.randn(16, 3, 16, 16) for _ in range(2)]
    pruner = fxprune.Pruner(model, X, "ccm", threshold=0.95, criterion=criterion)
    pruner.prune(calibration=batches)
    dup, ind = model.dup.out_channels, model.ind.out_channels
    assert dup == 4  # one copy of each distinct filter carries all the information
    assert ind > dup


def test_threshold_one_keeps_everything_and_lower_thresholds_slim_and_verify() -> None:
    torch.manual_seed(0)
    task, dense = Task(), SmallResNet()
    train(dense, task, 30)
    batches = [task.batch(1000 + i)[0] for i in range(2)]
    widths = {}
    for threshold in (1.0, 0.8):
        model = copy.deepcopy(dense)
        pruner = fxprune.Pruner(model, X, "ccm", threshold=threshold, round_to=2)
        report = pruner.prune(calibration=batches)
        widths[threshold] = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert report.exact_error < 1e-4
        assert not model._forward_pre_hooks  # the method's hooks are gone
    assert widths[1.0] == [m.out_channels for m in dense.modules() if isinstance(m, nn.Conv2d)]
    assert sum(widths[0.8]) < sum(widths[1.0])
    assert all(w % 2 == 0 for w in widths[0.8])  # round_to applies
    assert len(set(widths[0.8])) > 1  # one threshold, several widths


def test_widths_from_the_last_training_iterations_and_clear_errors() -> None:
    torch.manual_seed(0)
    task, model = Task(), SmallResNet()
    pruner = fxprune.Pruner(model, X, "ccm", threshold=0.8, steps=6, calibration_steps=2, lam=0.1)
    train(model, task, 10, pruner=pruner, until_done=True)
    assert pruner.done and pruner.iteration == 6
    # the last 2 batches of 32 images; a tensor read by two convs is counted once
    assert all(max(len(m) for m in maps) == 64 for maps in pruner.method.stats.values())
    report = pruner.prune()
    assert report.flops_ratio > 1.0
    with pytest.raises(ValueError, match="calibration"):
        fxprune.Pruner(SmallResNet(), X, "ccm").prune()
    with pytest.raises(ValueError, match="does not use calibration"):
        fxprune.Pruner(SmallResNet(), X, "l1").prune(calibration=[X])
    with pytest.raises(ValueError, match="criterion"):
        fxprune.Pruner(SmallResNet(), X, "ccm", criterion="svd")
