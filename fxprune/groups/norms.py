"""Normalisation layers: BatchNorm/InstanceNorm (per channel), LayerNorm and GroupNorm (channel-mixing).

As for :mod:`fxprune.groups.layers`, one function per layer serves its leaf module and its functional form.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .attr_constants import names_read_in_forward
from .computed_params import computed_batch_norm
from .context import OpContext
from .labels import Labels
from .layers import couple, module_names, param_members, params_owner
from .registry import LayerArgs, handles_modules, handles_ops, register_op_handler

__all__ = ["batch_norm", "group_norm", "layer_norm", "rms_norm"]


def _with_extra_outputs(ctx: OpContext, labels: Labels) -> Any:
    """The labels of an op returning ``(out, statistics...)`` in aten graphs, else of ``out`` alone."""
    return [labels] + [{} for _ in ctx.out[1:]] if isinstance(ctx.out, (tuple, list)) else labels


def _optional_params(ctx: OpContext) -> tuple[str, list[str | None]] | None:
    """Owner and names of an optional (weight, bias) pair at args 2 and 3 (LayerNorm, GroupNorm)."""
    got = params_owner(ctx, [(2, "weight"), (3, "bias")])
    if got is None and ctx.arg(2, "weight") is None:
        return "", [None, None]
    return got


# ---------------------------------------------------------------- batch norm
def batch_norm(ctx: OpContext, x_labels: Labels, module: str, names: list[str | None], size: int) -> Labels:
    """Per-channel affine and statistics on dim 1 (BatchNorm, InstanceNorm)."""
    members = param_members(module, *[(n, 0) for n in names])
    if members:
        couple(ctx, (x_labels or {}).get(1), ctx.table.block(module, members, size), ctx.where)
    return dict(x_labels or {})


_BATCH_NORM_ARGS = {
    # F.batch_norm(input, running_mean, running_var, weight, bias, ...)
    "F": [(3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var")],
    # aten.batch_norm(input, weight, bias, running_mean, running_var, ...)
    "aten": [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")],
}


def _functional_batch_norm(order: str) -> Callable[[OpContext], Any]:
    def handler(ctx: OpContext) -> Any:
        got = params_owner(ctx, _BATCH_NORM_ARGS[order])
        if got is None:
            computed = ctx.op_name == "batch_norm"  # the native variants return statistics too
            lab = computed_batch_norm(ctx, _BATCH_NORM_ARGS[order], 5) if computed else None
            if lab is None:
                return ctx.unsupported_op("batch norm with computed parameters")
            return _with_extra_outputs(ctx, lab)
        owner, names = got
        lab = batch_norm(ctx, ctx.larg(0, "input"), owner, names, ctx.arg(0, "input").shape[1])
        return _with_extra_outputs(ctx, lab)

    return handler


for _name in ("_native_batch_norm_legit_no_training", "_native_batch_norm_legit", "native_batch_norm"):
    register_op_handler(_name, _functional_batch_norm("aten"), LayerArgs(weight=1))


@handles_ops("batch_norm", layer=LayerArgs(weight=1))
def functional_batch_norm(ctx: OpContext) -> Any:
    """``F.batch_norm`` or ``aten.batch_norm`` (their arguments come in different orders)."""
    order = "aten" if isinstance(ctx.node.target, torch._ops.OpOverload) else "F"
    return _functional_batch_norm(order)(ctx)


@handles_modules(nn.modules.batchnorm._NormBase)
def batch_norm_module(ctx: OpContext, m: nn.Module) -> Labels:
    names = module_names(m, "weight", "bias", "running_mean", "running_var")
    return batch_norm(ctx, ctx.larg(0), ctx.module_name, names, m.num_features)


# ---------------------------------------------------------------- layer norm
def layer_norm(
    ctx: OpContext, x_labels: Labels, module: str, names, normalized_shape, kind: str = "LayerNorm"
) -> Labels:
    """LayerNorm (or RMSNorm, ``kind``): channel-mixing over its normalized dims, so removing channels is
    approximate."""
    nd = ctx.arg(0, "input").dim()
    k = len(normalized_shape)
    labeled = [d for d in range(nd - k, nd) if x_labels and d in x_labels]
    members = param_members(module, *[(n, 0) for n in names])
    if k == 1 and labeled:
        lab = x_labels[nd - 1]
        if members:
            ctx.table.union(lab, ctx.table.block(module, members, normalized_shape[0]))
        ctx.table.mark_approx(lab, f"{kind} over channels ({ctx.where})")
    else:
        for d in labeled:
            ctx.table.freeze(x_labels[d], f"{ctx.where}: normalization over several channel dims")
        if members and k == 1:
            ctx.table.freeze(ctx.table.block(module, members, normalized_shape[0]), ctx.where)
    return dict(x_labels or {})


@handles_ops("layer_norm", "native_layer_norm", layer=LayerArgs(weight=2))
def functional_layer_norm(ctx: OpContext) -> Any:
    got = _optional_params(ctx)
    if got is None:
        return ctx.unsupported_op("layer norm with computed parameters")
    owner, names = got
    lab = layer_norm(ctx, ctx.larg(0, "input"), owner, names, list(ctx.arg(1, "normalized_shape")))
    return _with_extra_outputs(ctx, lab)


@handles_modules(nn.LayerNorm)
def layer_norm_module(ctx: OpContext, m: nn.Module) -> Labels:
    names = module_names(m, "weight", "bias")
    return layer_norm(ctx, ctx.larg(0), ctx.module_name, names, list(m.normalized_shape))


# ---------------------------------------------------------------- RMS norm
def _shape_attribute(model: nn.Module | None, scope: str, shape: list[int]) -> str | None:
    """The attribute of module ``scope`` equal to ``shape`` that its forward reads (``normalized_shape``)."""
    try:
        m = model.get_submodule(scope) if model is not None else None
    except AttributeError:
        return None
    if m is None:
        return None
    read = names_read_in_forward(type(m))
    hits = [a for a, v in vars(m).items() if a in read and isinstance(v, (list, tuple)) and list(v) == shape]
    return hits[0] if len(hits) == 1 else None


def rms_norm(
    ctx: OpContext, x_labels: Labels, module: str, names, shape: list[int], attr: str | None
) -> Labels:
    """RMSNorm: approximate as LayerNorm. Its one normalized size is ``attr`` of the op's module, written
    after slimming; without such an attribute the size is a constant and the channels freeze."""
    last = ctx.arg(0, "input").dim() - 1
    lab = (x_labels or {}).get(last)
    out = layer_norm(ctx, x_labels, module, names, shape, "RMSNorm")
    if lab is not None and len(shape) == 1:
        if attr is None:
            ctx.table.freeze(lab, f"{ctx.where}: normalized size written as a constant")
        else:
            ctx.constants.append((ctx.module_name, f"{attr}[0]", lab))
    return out


@handles_ops("rms_norm", layer=LayerArgs(weight=2))
def functional_rms_norm(ctx: OpContext) -> Any:
    """``F.rms_norm(x, normalized_shape, weight, eps)`` and ``aten.rms_norm``."""
    got = params_owner(ctx, [(2, "weight")])
    weight_labels = None
    if got is None and ctx.arg(2, "weight") is not None:  # computed (``self.weight.float()``): per channel
        weight_labels = (ctx.larg(2, "weight") or {}).get(0)
        if weight_labels is None:
            return ctx.unsupported_op("RMS norm with a computed weight")
    shape = list(ctx.arg(1, "normalized_shape"))
    attr = _shape_attribute(ctx.model, ctx.module_name, shape)
    owner, names = got if got is not None else ("", [None])
    out = rms_norm(ctx, ctx.larg(0, "input"), owner, names, shape, attr)
    lab = (ctx.larg(0, "input") or {}).get(ctx.arg(0, "input").dim() - 1)
    if weight_labels is not None:
        couple(ctx, lab, weight_labels, ctx.where)
    return out


if hasattr(nn, "RMSNorm"):

    @handles_modules(nn.RMSNorm)
    def rms_norm_module(ctx: OpContext, m: nn.Module) -> Labels:
        names, shape = module_names(m, "weight"), list(m.normalized_shape)
        return rms_norm(ctx, ctx.larg(0), ctx.module_name, names, shape, "normalized_shape")


# ---------------------------------------------------------------- group norm
def group_norm(ctx: OpContext, x_labels: Labels, module: str, names, num_groups: int, size: int) -> Labels:
    """GroupNorm: equal widths per group; channel-mixing within groups, so approximate."""
    x = (x_labels or {}).get(1)
    members = param_members(module, *[(n, 0) for n in names])
    slots = ctx.table.block(module, members, size) if members else None
    if x is None:
        if slots is not None:
            ctx.table.freeze(slots, ctx.where)
        return dict(x_labels or {})
    grouped = x.reshape(num_groups, size // num_groups)
    ctx.table.union(grouped[:1], grouped)
    if slots is not None:
        ctx.table.union(x, slots)
    ctx.table.mark_approx(x, f"GroupNorm ({ctx.where})")
    return dict(x_labels)


@handles_ops("group_norm", layer=LayerArgs(weight=2))
def functional_group_norm(ctx: OpContext) -> Any:
    got = _optional_params(ctx)
    if got is None:
        return ctx.unsupported_op("group norm with computed parameters")
    owner, names = got
    x = ctx.arg(0, "input")
    return group_norm(ctx, ctx.larg(0, "input"), owner, names, ctx.arg(1, "num_groups"), x.shape[1])


@handles_modules(nn.GroupNorm)
def group_norm_module(ctx: OpContext, m: nn.Module) -> Labels:
    names = module_names(m, "weight", "bias")
    return group_norm(ctx, ctx.larg(0), ctx.module_name, names, m.num_groups, m.num_channels)
