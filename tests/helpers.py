"""Shared test helpers: random but well-conditioned weights, and an end-to-end pruning check."""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

import fxprune
from fxprune.importance import get_importance
from fxprune.plan import Plan, make_plan, resolve_round_to
from fxprune.verify.compare import flatten_outputs

__all__ = [
    "PruneCheck",
    "check_pruned",
    "output_shapes",
    "randomize_",
    "relative_error",
    "resnet18_at_64",
    "small_edgenext",
    "zero_removed_",
]

_LINEAR_LIKE = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def _fan_in(t: torch.Tensor, owner: nn.Module) -> int:
    if isinstance(owner, nn.modules.conv._ConvTransposeNd):
        return max(t.shape[0] * math.prod(t.shape[2:]) // max(owner.groups, 1), 1)
    return max(math.prod(t.shape[1:]), 1)


@torch.no_grad()
def randomize_(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give every parameter and normalisation statistic non-trivial random values (in place).

    Weights of conv/linear layers are normal with std ``gain / sqrt(fan_in)`` (gain drawn in [0.8, 1.3]
    per layer, so activations stay O(1) through deep nets), biases are nonzero, norm scales are in
    [0.5, 1.5], BN running means ~ N(0, 0.1) and running variances in [0.5, 2]. Scale-like parameters
    (ConvNeXt ``layer_scale``, 1e-6 at init) become ~0.5, zero-initialised heads get real weights. Index
    buffers (Swin relative position indices, ...) are left alone.
    """
    gen = torch.Generator().manual_seed(seed)

    def normal(t: torch.Tensor, std: float) -> torch.Tensor:
        return (torch.randn(t.shape, generator=gen) * std).to(t.dtype)

    def uniform(t: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
        return (lo + (hi - lo) * torch.rand(t.shape, generator=gen)).to(t.dtype)

    for _, mod in model.named_modules():
        for pname, p in mod.named_parameters(recurse=False):
            if not p.is_floating_point() or not p.requires_grad:
                continue  # fixed constants (e.g. the DFL projection of YOLO heads) stay as they are
            if isinstance(mod, _NORMS):
                new = uniform(p, 0.5, 1.5) if pname == "weight" else normal(p, 0.1)
            elif "scale" in pname.lower() or pname == "gamma":
                new = uniform(p, 0.3, 0.7)
            elif pname.endswith("bias") or p.dim() <= 1:
                new = normal(p, 0.1)
            elif isinstance(mod, _LINEAR_LIKE) or "weight" in pname:
                gain = float(0.8 + 0.5 * torch.rand((), generator=gen))
                new = normal(p, gain / math.sqrt(_fan_in(p, mod)))
            else:  # tokens, positional embeddings, relative position bias tables
                new = normal(p, 0.1)
            p.copy_(new.to(p.device))
        if isinstance(mod, nn.modules.batchnorm._NormBase) and mod.track_running_stats:
            if mod.running_mean is not None:
                mod.running_mean.copy_(normal(mod.running_mean, 0.1))
                mod.running_var.copy_(uniform(mod.running_var, 0.5, 2.0))
    return model


def output_shapes(out: Any) -> list[tuple[str, tuple[int, ...]]]:
    """Path and shape of every tensor of a (nested) model output."""
    return [(path, tuple(t.shape)) for path, t in flatten_outputs(out)]


def relative_error(reference: Any, candidate: Any) -> float:
    """Max over output tensors of ``max|a - b| / max|a|`` (shapes must agree)."""
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    assert len(ref) == len(cand), f"{len(ref)} output tensors vs {len(cand)}"
    worst = 0.0
    for (path, a), (_, b) in zip(ref, cand):
        assert a.shape == b.shape, f"{path}: {tuple(a.shape)} vs {tuple(b.shape)}"
        if not a.is_floating_point():
            assert torch.equal(a, b), path
            continue
        a, b = a.double(), b.double()
        worst = max(worst, ((a - b).abs().max() / (a.abs().max() + 1e-12)).item())
    return worst


def _run(model: nn.Module, x: Any) -> Any:
    with torch.no_grad():
        if isinstance(x, dict):
            return model(**x)
        if isinstance(x, (tuple, list)):
            return model(*x)
        return model(x)


@torch.no_grad()
def zero_removed_(model: nn.Module, groups: list, plan: Plan) -> None:
    """Zero, in ``model``, every parameter slice the plan removes (running variances set to 1).

    For exact groups the result computes what the slim model computes: a removed channel is zero after
    its producer (conv/linear rows, bias and norm affine are zero) and contributes nothing to its
    consumers (their input columns are zero). This is an independent check of the slicing.
    """
    tensors = dict(model.named_parameters(remove_duplicate=False))
    tensors.update(dict(model.named_buffers(remove_duplicate=False)))
    for g in groups:
        removed = plan.remove.get(g.id)
        if removed is None or len(removed) == 0:
            continue
        for b in g.blocks:
            pos = np.nonzero(np.isin(g.block_atom_index[b.base], removed))[0]
            if len(pos) == 0:
                continue
            index = torch.as_tensor(pos, dtype=torch.long)
            for name, dim in b.members:
                t = tensors.get(name)
                if t is None:
                    continue
                t.index_fill_(dim, index.to(t.device), 1.0 if name.endswith("running_var") else 0.0)


class _Recorder:
    """An importance criterion that delegates to another and remembers the groups it scored."""

    def __init__(self, importance: Any):
        self.fn = get_importance(importance)
        self.groups: dict[int, Any] = {}
        self.scores: dict[int, np.ndarray] = {}

    def __call__(self, model: nn.Module, group: Any) -> np.ndarray:
        s = np.asarray(self.fn(model, group), dtype=np.float64)
        self.groups[group.id] = group
        self.scores[group.id] = s
        return s


@dataclass
class PruneCheck:
    report: Any
    dense_out: Any
    slim_out: Any
    plan: Plan | None = None
    groups: list = field(default_factory=list)
    zeroed_error: float | None = None


def check_pruned(
    model: nn.Module,
    x: Any,
    ratio: float = 0.5,
    *,
    min_flops_ratio: float = 1.2,
    max_exact_error: float = 1e-4,
    expect_approx: bool | None = None,
    check_zeroed: bool = True,
    **kw: Any,
) -> PruneCheck:
    """Prune ``model`` in place with :func:`fxprune.prune` and check the result.

    Asserts: the class is unchanged, every output tensor keeps its shape, FLOPs drop by more than
    ``min_flops_ratio``, the exact groups' verification error is at most ``max_exact_error``, and the
    slim model's output (recomputed here) is finite. With ``check_zeroed`` (and no approximate group
    pruned), the slim output is also compared with a dense copy whose removed slices were zeroed.
    ``expect_approx``: whether approximate (LayerNorm/GroupNorm-coupled) groups must have been pruned.
    """
    model.eval()
    cls = type(model)
    dense = copy.deepcopy(model)
    dense_out = _run(dense, x)
    shapes = output_shapes(dense_out)
    assert shapes, "the model returned no tensor"
    for path, t in flatten_outputs(dense_out):
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"dense output {path} is not finite"

    recorder = _Recorder(kw.pop("importance", "l2"))
    report = fxprune.prune(model, x, ratio, importance=recorder, **kw)

    assert type(model) is cls
    model.eval()
    slim_out = _run(model, x)
    assert output_shapes(slim_out) == shapes
    for path, t in flatten_outputs(slim_out):
        if t.is_floating_point():
            assert torch.isfinite(t).all(), f"slim output {path} is not finite"
    before, after = report.flops_before, report.flops_after
    assert after < before, f"FLOPs not reduced: {before} -> {after}"
    assert report.flops_ratio > min_flops_ratio, f"FLOPs ratio {report.flops_ratio:.3f} <= {min_flops_ratio}"
    assert report.params_after <= report.params_before
    assert report.exact_error is not None
    assert report.exact_error <= max_exact_error, report.exact_error
    if expect_approx is not None:
        assert bool(report.approx_groups) == expect_approx, report.approx_groups
        if expect_approx:
            assert report.approx_error is not None and math.isfinite(report.approx_error)
    result = PruneCheck(report, dense_out, slim_out)

    targeted = kw.get("target_flops") is not None or kw.get("target_params") is not None
    if check_zeroed and not report.approx_groups and not targeted and recorder.groups:
        groups = [recorder.groups[i] for i in sorted(recorder.groups)]
        round_to = resolve_round_to(kw.get("round_to"))
        plan = make_plan(groups, recorder.scores, ratio, kw.get("ratios"), round_to,
                         kw.get("min_width", 1), kw.get("global_ranking", False))
        assert plan.removed_count() > 0
        zero_removed_(dense, groups, plan)
        result.plan, result.groups = plan, groups
        result.zeroed_error = relative_error(_run(dense, x), slim_out)
        assert result.zeroed_error <= max(max_exact_error, 1e-4), result.zeroed_error
    return result


def small_edgenext(
    dims: tuple[int, ...], global_block_counts: tuple[int, ...], depths: tuple[int, ...]
) -> nn.Module:
    """A timm EdgeNeXt in eval mode (seed 0, 8 heads, split scales 2, 2, 3, 4, 10 classes): real SDTA and XCA
    blocks at a test's size. Skips the test when timm is missing."""
    import pytest

    edgenext = pytest.importorskip("timm.models.edgenext")
    torch.manual_seed(0)
    return edgenext.EdgeNeXt(
        depths=depths, dims=dims, heads=(8, 8, 8, 8), global_block_counts=global_block_counts,
        d2_scales=(2, 2, 3, 4), num_classes=10,
    ).eval()  # fmt: skip


def resnet18_at_64() -> tuple[nn.Module, torch.Tensor, Any]:
    """A randomized 10-class torchvision ResNet-18, a 64x64 input and its analysis."""
    import torchvision.models as tvm

    torch.manual_seed(0)
    model = randomize_(tvm.resnet18(num_classes=10).eval())
    x = torch.randn(1, 3, 64, 64)
    return model, x, fxprune.analyze(model, x)
