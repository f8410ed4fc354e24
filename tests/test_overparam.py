"""Over-parameterized fine-tuning: exact expansion, exact merge, SP-KD loss, the fine-tuning helper."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fxprune.overparam import (
    ExpandedConv2d,
    ExpandedLinear,
    OverparamFinetune,
    SimilarityLoss,
    expand,
    merge,
    similarity_loss,
)
from tests.small_task import SmallResNet, Task, train

pytestmark = pytest.mark.usefixtures("single_thread")


class Mixed(nn.Module):
    """A strided conv with bias, a depthwise conv (stays), BN, a dilated conv and a linear head."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=True)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.dil = nn.Conv2d(8, 6, 3, padding=2, dilation=2, bias=False)
        self.fc = nn.Linear(6, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.bn(self.conv(x)))
        x = self.dil(self.dw(x))
        return self.fc(x.mean((2, 3)))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


def test_expand_keeps_outputs_and_adds_parameters() -> None:
    torch.manual_seed(0)
    model = Mixed().eval()
    x = torch.randn(4, 3, 16, 16)
    ref = model(x)
    before = sum(p.numel() for p in model.parameters())
    names = expand(model, factor=2.0, exclude=["fc"])
    assert names == ["conv", "dil"]  # the depthwise conv and the excluded head stay
    assert isinstance(model.conv, ExpandedConv2d) and isinstance(model.dw, nn.Conv2d)
    assert isinstance(model.bn, nn.BatchNorm2d)  # BN stays outside the block
    assert sum(p.numel() for p in model.parameters()) > before
    assert _rel(model(x), ref) <= 1e-5
    # the outer factors are orthonormal
    a = model.conv.a.weight[:, :, 0, 0]
    c = model.conv.c.weight[:, :, 0, 0]
    assert torch.allclose(a.t() @ a, torch.eye(3), atol=1e-5)
    assert torch.allclose(c @ c.t(), torch.eye(8), atol=1e-5)
    expand(model, factor=1.5)
    assert isinstance(model.fc, ExpandedLinear) and isinstance(model.conv.a, nn.Conv2d)  # not re-expanded
    assert _rel(model(x), ref) <= 1e-5


def test_every_new_parameter_gets_a_gradient() -> None:
    torch.manual_seed(0)
    model = Mixed()
    expand(model, factor=2.0)
    F.cross_entropy(model(torch.randn(4, 3, 16, 16)), torch.tensor([0, 1, 2, 3])).backward()
    for name, p in model.named_parameters():
        if any(k in name for k in (".a.", ".b.", ".c.")):
            assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_merge_restores_the_original_and_equals_the_trained_expansion() -> None:
    torch.manual_seed(0)
    model = Mixed()
    original = copy.deepcopy(model)
    expand(model, factor=2.0)
    assert merge(model) == ["conv", "dil", "fc"]
    for (name, p), q in zip(model.named_parameters(), original.parameters()):
        assert p.shape == q.shape and torch.allclose(p, q, atol=1e-5), name
    expand(model, factor=3.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(8, 3, 16, 16)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    x = torch.randn(4, 3, 16, 16)
    expanded = model(x)
    merge(model)
    assert not any(isinstance(m, (ExpandedConv2d, ExpandedLinear)) for m in model.modules())
    assert _rel(model(x), expanded) <= 1e-5
    assert not torch.allclose(model.conv.weight, original.conv.weight)  # training changed them


def test_similarity_loss_hand_computed() -> None:
    t = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # Q Q^T = I, rows already unit
    s = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # Q Q^T = 2 * ones -> rows [1, 1] / sqrt(2)
    h = 1 / 2**0.5
    expected = ((1 - h) ** 2 * 2 + h**2 * 2) / 4
    assert similarity_loss(t, s).item() == pytest.approx(expected, rel=1e-6)
    assert similarity_loss(t, t).item() == 0.0


def test_similarity_loss_between_models_by_name() -> None:
    torch.manual_seed(0)
    teacher, student = Mixed(), Mixed()
    sp = SimilarityLoss(teacher, student, ["conv", "fc"])
    x = torch.randn(6, 3, 16, 16)
    with torch.no_grad():
        teacher(x)
    student(x)
    got = sp()
    with torch.no_grad():
        ft = teacher.conv(x)
    expected = similarity_loss(ft, student.conv(x)) + similarity_loss(teacher(x), student(x))
    assert got.item() == pytest.approx(expected.item(), rel=1e-5)
    with pytest.raises(ValueError, match="teacher has no module"):
        SimilarityLoss(teacher, student, {"conv": "nope"})
    sp.close()


def test_finetune_helper_trains_and_merges_to_the_compact_shapes() -> None:
    torch.manual_seed(0)
    task = Task()
    dense = SmallResNet()
    train(dense, task, 20)
    dense.zero_grad(set_to_none=True)
    slim = copy.deepcopy(dense)
    shapes = {n: p.shape for n, p in slim.named_parameters()}
    ft = OverparamFinetune(slim, dense, factor=2.0, weight=100.0)
    assert "stem.0" in ft.expanded and "fc" in ft.expanded
    assert ft.sp is not None and "layer1.0.conv1" in ft.sp.pairs  # matched by name
    opt = torch.optim.SGD(slim.parameters(), lr=0.02, momentum=0.9)
    for i in range(3):
        x, y = task.batch(500 + i)
        loss = F.cross_entropy(slim(x), y) + ft.penalty(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert all(p.grad is None for p in dense.parameters())  # the teacher stays frozen
    slim.eval()
    x = task.batch(900)[0]
    expanded = slim(x)
    ft.merge()
    assert {n: p.shape for n, p in slim.named_parameters()} == shapes
    assert _rel(slim(x), expanded) <= 1e-5
    assert not slim.layer1[0].conv1._forward_hooks  # the distillation hooks are gone
