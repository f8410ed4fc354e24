"""Inputs users actually have: opaque ops, tied weights, half precision, channel counts in attributes,
report figures that cannot be computed, example inputs that do not fit, channels-last and CUDA models.

Each case ends in a clear fxprune error or a verified slim model, never in a crash from deep inside."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

import fxprune
from fxprune.capture.fit import InputMismatchError
from tests.helpers import randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

X = (1, 3, 8, 8)


class _Stem(nn.Module):
    """conv a (3 -> 16) feeds the block under test, conv c (16 -> 4) reads its result."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 16, 3, padding=1)
        self.c = nn.Conv2d(16, 4, 1)


def _prune(model: nn.Module, x: torch.Tensor | None = None, **kw) -> fxprune.PruneReport:
    x = torch.randn(X) if x is None else x
    return fxprune.prune(randomize_(model, 0).eval(), x, 0.5, round_to=1, **kw)


def _width(report: fxprune.PruneReport, module: str) -> tuple[int, int]:
    """(before, after) of the group whose first module is ``module`` and that changes or is widest."""
    rows = [(b, a) for _, first, b, a in report.widths if first == module]
    return max(rows, key=lambda r: (r[0] - r[1], r[0]))


# ---------------------------------------------------------------- (a) ops the analysis cannot see into
class ReverseChannels(torch.autograd.Function):
    """Permutes channels through numpy: nothing a tracer can follow."""

    @staticmethod
    def forward(ctx, x):
        return torch.from_numpy(np.ascontiguousarray(x.detach().numpy()[:, ::-1]))

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1)


class FlipInFunction(torch.autograd.Function):
    """Permutes channels with traceable torch code: still opaque, its forward is not looked into."""

    @staticmethod
    def forward(ctx, x):
        return x.flip(1)

    @staticmethod
    def backward(ctx, grad):
        return grad.flip(1)


class WithFunction(_Stem):
    def __init__(self, fn: type[torch.autograd.Function]) -> None:
        super().__init__()
        self.fn = fn
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x):
        x = self.fn.apply(self.a(x).relu())
        return self.c(self.b(x).relu())


@pytest.mark.parametrize("fn", [ReverseChannels, FlipInFunction])
def test_custom_autograd_function_freezes_its_channels_and_is_reported(fn):
    analysis = fxprune.analyze(WithFunction(fn), torch.randn(X))
    assert [u.op for u in analysis.unsupported] == [f"{fn.__name__}.apply"]
    model = WithFunction(fn)
    report = _prune(model)
    assert report.verified and report.exact_error < 1e-4
    assert model.a.out_channels == 16  # what the function reads stays whole
    assert model.b.out_channels == 8  # the rest of the model is still pruned
    model(torch.randn(X))


class Flip(_Stem):
    def forward(self, x):
        return self.c(self.a(x).flip(1))


class Roll(_Stem):
    def forward(self, x):
        return self.c(self.a(x).roll(3, 1))


def test_flip_along_channels_is_followed_and_roll_freezes():
    flipped = Flip()
    report = _prune(flipped)
    assert report.verified and flipped.a.out_channels == 8
    rolled = Roll()
    report = _prune(rolled)
    assert report.verified and rolled.a.out_channels == 16


# ---------------------------------------------------------------- (b) parameters tied across modules
class Tied(_Stem):
    def __init__(self) -> None:
        super().__init__()
        self.b = nn.Conv2d(16, 16, 3, padding=1)
        self.d = nn.Conv2d(16, 16, 3, padding=1)
        self.d.weight = self.b.weight

    def forward(self, x):
        x = self.a(x).relu()
        return self.c(self.d(self.b(x).relu()).relu())


def test_tied_parameters_form_one_group_and_stay_tied():
    analysis = fxprune.analyze(Tied(), torch.randn(X))
    tied = [g for g in analysis.groups if {"a", "b", "d"} <= set(g.modules)]
    assert len(tied) == 1  # a's outputs = b's inputs = b's outputs (same tensor as d's) = d's inputs
    model = Tied()
    report = _prune(model)
    assert report.verified
    assert model.b.weight is model.d.weight
    assert tuple(model.b.weight.shape) == (8, 8, 3, 3) and model.c.in_channels == 8
    assert len({id(p) for p in model.parameters()}) == len(list(model.parameters()))
    model(torch.randn(X))


# ---------------------------------------------------------------- (c) half precision
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_model_is_verified_and_keeps_its_dtype(dtype):
    model = randomize_(torchvision.models.resnet18(), 0).eval().to(dtype)
    x = torch.randn(1, 3, 32, 32).to(dtype)
    report = fxprune.prune(model, x, 0.5)
    assert report.verified and report.exact_error < 1e-4
    assert {p.dtype for p in model.parameters()} == {dtype}
    assert {b.dtype for b in model.buffers() if b.is_floating_point()} == {dtype}
    assert model.layer1[0].conv1.out_channels == 32
    assert model(x).dtype == dtype


def test_half_precision_model_keeps_its_dtype_when_verification_fails(monkeypatch):
    one_call = importlib.import_module("fxprune.prune")  # the module (fxprune.prune is the function)

    def broken_compare(*args, **kwargs):
        raise RuntimeError("comparison failed")

    monkeypatch.setattr(one_call, "compare_outputs", broken_compare)
    model = randomize_(torchvision.models.resnet18(), 0).eval().half()
    with pytest.raises(RuntimeError, match="comparison failed"):
        fxprune.prune(model, torch.randn(1, 3, 32, 32).half(), 0.5)
    assert {p.dtype for p in model.parameters()} == {torch.float16}


# ---------------------------------------------------------------- (d) channel counts in attributes
class FunctionalDepthwise(_Stem):
    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(16, 1, 3, 3))
        self.groups = 16

    def forward(self, x):
        return self.c(F.conv2d(self.a(x), self.weight, padding=1, groups=self.groups))


class FunctionalLayerNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.c = nn.Linear(8, 16), nn.Linear(16, 4)
        self.weight = nn.Parameter(torch.ones(16))
        self.dim = 16

    def forward(self, x):
        return self.c(F.layer_norm(self.a(x), (self.dim,), self.weight))


class ExpandToWidth(_Stem):
    def __init__(self) -> None:
        super().__init__()
        self.width = 16

    def forward(self, x):
        x = self.a(x)
        n, _, h, w = x.shape
        return self.c(x + x.mean((2, 3), keepdim=True).expand(n, self.width, h, w))


class ConstantScale(_Stem):
    def __init__(self) -> None:
        super().__init__()
        self.width = 16

    def forward(self, x):
        return self.c(self.a(x) * torch.linspace(0.5, 1.5, self.width).reshape(self.width, 1, 1))


@pytest.mark.parametrize(
    "cls, x",
    [
        (FunctionalDepthwise, torch.randn(X)),
        (FunctionalLayerNorm, torch.randn(2, 8)),
        (ExpandToWidth, torch.randn(X)),
        (ConstantScale, torch.randn(X)),
    ],
)
def test_channel_count_in_an_attribute_gives_a_working_model(cls, x):
    model = cls()
    report = _prune(model, x)
    assert report.verified and report.exact_error < 1e-4
    assert model.a.weight.shape[0] == 16  # the channels the constant pins stay
    assert model(x).shape == cls()(x).shape


def test_attribute_constant_is_named_in_unsupported():
    analysis = fxprune.analyze(FunctionalDepthwise(), torch.randn(X))
    assert any("groups = 16" in u.reason for u in analysis.unsupported)
    frozen = [g for g in analysis.groups if "a" in g.modules and g.width == 16]
    assert frozen and frozen[0].prunable == 0


def test_attribute_that_does_not_size_channels_changes_nothing():
    class Scaled(_Stem):
        def __init__(self) -> None:
            super().__init__()
            self.groups = 4  # a literal, but never the size of a channel dim

        def forward(self, x):
            return self.c(self.a(x).reshape(1, 16, -1).softmax(-1).reshape(1, 16, 8, 8) * self.groups)

    # the constant 16 in reshape freezes by itself; the unrelated attribute adds no report entry
    analysis = fxprune.analyze(Scaled(), torch.randn(X))
    assert not any("groups" in u.reason for u in analysis.unsupported)


class LayerNorm2d(nn.LayerNorm):
    def forward(self, x):
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ConvNorm(nn.Sequential):
    """Keeps ``out_channels`` for its users, but its forward never reads it."""

    def __init__(self) -> None:
        super().__init__(nn.Conv2d(3, 16, 3, padding=1), LayerNorm2d(16))
        self.out_channels = 16


def test_attribute_its_forward_does_not_read_pins_nothing():
    model = nn.Sequential(ConvNorm(), nn.Conv2d(16, 4, 1))
    report = _prune(model)
    assert report.verified and model[0][0].out_channels == 8 and model[0][1].normalized_shape == (8,)


# ---------------------------------------------------------------- (e) report figures never sink the prune
class RefusesDispatchModes(_Stem):
    """Runs normally, but raises under a torch dispatch mode (what torch's FLOP counter uses)."""

    def forward(self, x):
        from torch.utils._python_dispatch import _get_current_dispatch_mode

        if _get_current_dispatch_mode() is not None:
            raise RuntimeError("this op has no kernel under a dispatch mode")
        return self.c(self.a(x).relu())


def test_flops_that_cannot_be_counted_leave_a_verified_model(monkeypatch):
    report = _prune(RefusesDispatchModes())  # counted from the analysis: no pass runs under the counter
    assert report.verified and report.flops_before == 2 * report.flops_after > 0

    class NoCostTable:  # as for a model the analysis ran on fake or real tensors: the passes are counted
        exact = False

        def __init__(self, analysis):
            pass

        def fits(self, example_inputs):
            return False

    monkeypatch.setattr(importlib.import_module("fxprune.prune"), "PlanCosts", NoCostTable)
    model = RefusesDispatchModes()
    report = _prune(model)
    assert report.verified and model.a.out_channels == 8
    assert report.flops_before is None and report.flops_after is None
    assert any("FLOPs could not be counted" in w for w in report.warnings)
    assert np.isnan(report.flops_ratio)


# ---------------------------------------------------------------- (f) example inputs that do not fit
def test_inputs_with_the_wrong_channel_count_name_the_first_layer():
    model = torchvision.models.resnet18().eval()
    with pytest.raises(InputMismatchError, match=r"'conv1' \(Conv2d: in_channels=3") as err:
        fxprune.prune(model, torch.randn(1, 1, 32, 32), 0.5)
    assert "tensor [1, 1, 32, 32] float32" in str(err.value)
    assert isinstance(err.value, ValueError)
    assert model.conv1.out_channels == 64  # untouched


def test_inputs_with_the_wrong_dtype_are_named():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    with pytest.raises(InputMismatchError, match=r"in_features=8, float32") as err:
        fxprune.analyze(model, torch.randn(2, 8, dtype=torch.float64))
    assert "float64" in str(err.value)


# ---------------------------------------------------------------- (g) device and memory format
def _conv_layouts(model: nn.Module) -> set[bool]:
    return {
        m.weight.is_contiguous(memory_format=torch.channels_last)
        for m in model.modules()
        if isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1)
    }


def test_channels_last_model_stays_channels_last():
    model = randomize_(torchvision.models.resnet18(), 0).eval().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 32).to(memory_format=torch.channels_last)
    report = fxprune.prune(model, x, 0.5)
    assert report.verified and model.layer1[0].conv1.out_channels == 32
    assert _conv_layouts(model) == {True}
    assert model(x).shape == (1, 1000)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_model_stays_on_its_device_and_layout():
    model = randomize_(torchvision.models.resnet18(), 0).eval().cuda().to(memory_format=torch.channels_last)
    x = torch.randn(1, 3, 32, 32, device="cuda").to(memory_format=torch.channels_last)
    report = fxprune.prune(model, x, 0.5)
    assert report.verified
    assert {p.device.type for p in [*model.parameters(), *model.buffers()]} == {"cuda"}
    assert _conv_layouts(model) == {True}
    assert model(x).device.type == "cuda"
