"""Handlers for parametric layers: they tie activation channels to slices of weights and buffers."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .context import OpContext
from .labels import Labels

__all__ = ["batch_norm", "conv", "embedding", "group_norm", "layer_norm", "linear", "prelu"]


def _couple(ctx: OpContext, act: np.ndarray | None, slots: np.ndarray, what: str) -> None:
    """Tie activation channels to parameter slots; without activation labels the slots are frozen."""
    if act is None:
        ctx.table.freeze(slots, f"{what}: input channels come from a tensor that cannot be pruned")
    else:
        ctx.table.union(act, slots)


def _members(module: str, *pairs: tuple[str | None, int]) -> tuple[tuple[str, int], ...]:
    return tuple((f"{module}.{p}" if module else p, d) for p, d in pairs if p is not None)


def conv(
    ctx: OpContext,
    x_labels: Labels,
    weight: torch.Tensor,
    module: str,
    names: tuple[str, str | None],
    groups: int,
    transposed: bool = False,
) -> Labels:
    """Conv (1d/2d/3d, grouped, depthwise, transposed). ``names`` = (weight name, bias name or None)."""
    w, b = names
    ndim_x = ctx.arg(0, "input").dim()
    cdim = ndim_x - (weight.dim() - 1)
    x = x_labels.get(cdim) if x_labels else None
    other = {d: lab for d, lab in (x_labels or {}).items() if d != cdim}
    for lab in other.values():
        ctx.table.freeze(lab, f"{ctx.where}: channels on a spatial dim")
    if transposed:
        cin, cout = weight.shape[0], weight.shape[1] * groups
        if groups != 1:
            if x is not None:
                ctx.table.freeze(x, f"{ctx.where}: grouped transposed conv")
            return {cdim: ctx.table.freeze_new(cout, f"{ctx.where}: grouped transposed conv")}
        _couple(ctx, x, ctx.table.block(module, _members(module, (w, 0)), cin), ctx.where)
        return {cdim: ctx.table.block(module, _members(module, (w, 1), (b, 0)), cout)}
    cout, cin_g = weight.shape[0], weight.shape[1]
    out = ctx.table.block(module, _members(module, (w, 0), (b, 0)), cout)
    if groups == 1:
        _couple(ctx, x, ctx.table.block(module, _members(module, (w, 1)), cin_g), ctx.where)
        return {cdim: out}
    cout_g = cout // groups
    per_group = out.reshape(groups, cout_g)
    if cin_g == 1:  # depthwise: each input channel owns its group's outputs
        if x is None:
            ctx.table.freeze(out, f"{ctx.where}: depthwise conv on channels that cannot be pruned")
        else:
            ctx.table.union(x.reshape(groups, 1), per_group)
        return {cdim: out}
    # grouped conv: every group keeps the same width, so a position is removed in all groups at once
    in_slots = ctx.table.block(module, _members(module, (w, 1)), cin_g)
    if x is None:
        ctx.table.freeze(in_slots, f"{ctx.where}: grouped conv on channels that cannot be pruned")
    else:
        ctx.table.union(x.reshape(groups, cin_g), in_slots.reshape(1, cin_g))
    ctx.table.union(per_group[:1], per_group)
    return {cdim: out}


def linear(ctx: OpContext, x_labels: Labels, weight: torch.Tensor, module: str, names) -> Labels:
    """Linear on the last dim; other labeled dims pass through."""
    w, b = names
    nd = ctx.arg(0, "input").dim()
    last = nd - 1
    _couple(
        ctx,
        (x_labels or {}).get(last),
        ctx.table.block(module, _members(module, (w, 1)), weight.shape[1]),
        ctx.where,
    )
    out = dict((x_labels or {}).items())
    out[last] = ctx.table.block(module, _members(module, (w, 0), (b, 0)), weight.shape[0])
    return out


def batch_norm(ctx: OpContext, x_labels: Labels, module: str, names: list[str | None], size: int) -> Labels:
    """Per-channel affine and statistics on dim 1 (BatchNorm, InstanceNorm)."""
    members = _members(module, *[(n, 0) for n in names])
    if members:
        _couple(ctx, (x_labels or {}).get(1), ctx.table.block(module, members, size), ctx.where)
    return dict(x_labels or {})


def layer_norm(ctx: OpContext, x_labels: Labels, module: str, names, normalized_shape) -> Labels:
    """LayerNorm: channel-mixing over its normalized dims, so removing channels is approximate."""
    nd = ctx.arg(0, "input").dim()
    k = len(normalized_shape)
    norm_dims = list(range(nd - k, nd))
    labeled = [d for d in norm_dims if x_labels and d in x_labels]
    members = _members(module, *[(n, 0) for n in names])
    if k == 1 and labeled:
        lab = x_labels[nd - 1]
        if members:
            ctx.table.union(lab, ctx.table.block(module, members, normalized_shape[0]))
        ctx.table.mark_approx(lab, f"LayerNorm over channels ({ctx.where})")
    else:
        for d in labeled:
            ctx.table.freeze(x_labels[d], f"{ctx.where}: normalization over several channel dims")
        if members and k == 1:
            ctx.table.freeze(ctx.table.block(module, members, normalized_shape[0]), ctx.where)
    return dict(x_labels or {})


def group_norm(ctx: OpContext, x_labels: Labels, module: str, names, num_groups: int, size: int) -> Labels:
    """GroupNorm: equal widths per group; channel-mixing within groups, so approximate."""
    x = (x_labels or {}).get(1)
    members = _members(module, *[(n, 0) for n in names])
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


def embedding(ctx: OpContext, weight: torch.Tensor, module: str, name: str) -> Labels:
    nd = ctx.out.dim()
    return {nd - 1: ctx.table.block(module, _members(module, (name, 1)), weight.shape[1])}


def prelu(ctx: OpContext, x_labels: Labels, module: str, name: str, weight: torch.Tensor) -> Labels:
    if weight.numel() > 1:
        _couple(
            ctx,
            (x_labels or {}).get(1),
            ctx.table.block(module, _members(module, (name, 0)), weight.numel()),
            ctx.where,
        )
    return dict(x_labels or {})


def module_names(m: nn.Module, *names: str) -> list[str | None]:
    """The names among ``names`` that are set (not None) on ``m``."""
    return [n if getattr(m, n, None) is not None else None for n in names]
