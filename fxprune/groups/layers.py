"""Parametric layers (conv, linear, embedding, PReLU): they tie activation channels to weight slices.

Each layer has one function computing its labels, called by the handler of its leaf module
(``nn.Conv2d``) and by that of its functional form (``F.conv2d`` or ``aten.convolution`` with a
parameter of some module as weight). Normalisation layers are in :mod:`fxprune.groups.norms`.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .computed_params import computed_conv
from .context import OpContext, structure_like
from .grouped_conv import prune_whole_groups
from .labels import Labels
from .registry import LayerArgs, handles_modules, handles_ops, register_op_handler

__all__ = [
    "conv",
    "couple",
    "embedding",
    "linear",
    "module_names",
    "param_members",
    "param_owner",
    "params_owner",
    "prelu",
    "recurrent_module",
]


def couple(ctx: OpContext, act: np.ndarray | None, slots: np.ndarray, what: str) -> None:
    """Tie activation channels to parameter slots; without activation labels the slots are frozen."""
    if act is None:
        ctx.table.freeze(slots, f"{what}: input channels come from a tensor that cannot be pruned")
    else:
        ctx.table.union(act, slots)


def param_members(module: str, *pairs: tuple[str | None, int]) -> tuple[tuple[str, int], ...]:
    """``(module.parameter, dim)`` pairs of a block; parameters given as None are left out."""
    return tuple((f"{module}.{p}" if module else p, d) for p, d in pairs if p is not None)


def module_names(m: nn.Module, *names: str) -> list[str | None]:
    """The names among ``names`` that are set (not None) on ``m``."""
    return [n if getattr(m, n, None) is not None else None for n in names]


def param_owner(ctx: OpContext, i: int, name: str) -> tuple[str, str] | None:
    """(owner module, attribute) of a parameter argument given by a get_attr node, else None."""
    node_arg = ctx.node.args[i] if i < len(ctx.node.args) else ctx.node.kwargs.get(name)
    if isinstance(node_arg, torch.fx.Node) and node_arg.op == "get_attr":
        owner, _, attr = node_arg.target.rpartition(".")
        return owner, attr
    return None


def params_owner(ctx: OpContext, specs: list[tuple[int, str]]) -> tuple[str, list[str | None]] | None:
    """Owner and attribute names of several parameter arguments (all must share one owner).

    An argument that is None gives None as its name; None when an argument is computed or the owners differ.
    """
    owner, names = None, []
    for i, name in specs:
        if ctx.arg(i, name) is None:
            names.append(None)
            continue
        p = param_owner(ctx, i, name)
        if p is None or (owner is not None and p[0] != owner):
            return None
        owner = p[0]
        names.append(p[1])
    return (owner or "", names) if owner is not None else None


# ---------------------------------------------------------------- convolution
def _transposed_conv(ctx, x, cdim, weight, module, names, groups) -> Labels:
    w, b = names
    cin, cout = weight.shape[0], weight.shape[1] * groups
    if groups != 1:
        if x is not None:
            ctx.table.freeze(x, f"{ctx.where}: grouped transposed conv")
        return {cdim: ctx.table.freeze_new(cout, f"{ctx.where}: grouped transposed conv")}
    couple(ctx, x, ctx.table.block(module, param_members(module, (w, 0)), cin), ctx.where)
    return {cdim: ctx.table.block(module, param_members(module, (w, 1), (b, 0)), cout)}


def _grouped_conv(ctx: OpContext, x, out: np.ndarray, module: str, w: str, groups: int, cin_g: int) -> None:
    """Couple a grouped conv's channels: a depthwise input owns its outputs, other groups stay equal."""
    per_group = out.reshape(groups, len(out) // groups)
    if cin_g == 1:  # depthwise: each input channel owns its group's outputs
        if x is None:
            ctx.table.freeze(out, f"{ctx.where}: depthwise conv on channels that cannot be pruned")
        else:
            ctx.table.union(x.reshape(groups, 1), per_group)
        return
    if prune_whole_groups(ctx, x, out, module, groups, cin_g):
        return
    # grouped conv: every group keeps the same width, so a position is removed in all groups at once
    in_slots = ctx.table.block(module, param_members(module, (w, 1)), cin_g)
    if x is None:
        ctx.table.freeze(in_slots, f"{ctx.where}: grouped conv on channels that cannot be pruned")
    else:
        ctx.table.union(x.reshape(groups, cin_g), in_slots.reshape(1, cin_g))
    ctx.table.union(per_group[:1], per_group)


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
    cdim = ctx.arg(0, "input").dim() - (weight.dim() - 1)
    x = x_labels.get(cdim) if x_labels else None
    passed = {}  # channels on a spatial dim the conv maps position by position (kernel 1, same size)
    for d, lab in (x_labels or {}).items():
        pointwise = d > cdim and weight.shape[1 + d - cdim] == 1 and ctx.out.shape[d] == len(lab)
        if pointwise and not transposed:
            passed[d] = lab
        elif d != cdim:
            ctx.table.freeze(lab, f"{ctx.where}: channels on a spatial dim")
    if transposed:
        return _transposed_conv(ctx, x, cdim, weight, module, names, groups)
    cout, cin_g = weight.shape[0], weight.shape[1]
    out = ctx.table.block(module, param_members(module, (w, 0), (b, 0)), cout)
    if groups == 1:
        couple(ctx, x, ctx.table.block(module, param_members(module, (w, 1)), cin_g), ctx.where)
    else:
        _grouped_conv(ctx, x, out, module, w, groups, cin_g)
    return {cdim: out, **passed}


def _functional_conv(transposed: bool, aten_convolution: bool = False) -> Callable[[OpContext], Any]:
    """Handler of ``F.conv*``/``aten.conv*`` (``aten.convolution`` reads ``transposed`` from its args)."""

    def handler(ctx: OpContext) -> Any:
        if aten_convolution:
            is_transposed, groups = bool(ctx.arg(6, "transposed")), ctx.arg(8, "groups", 1)
        else:
            is_transposed, groups = transposed, ctx.arg(6, "groups", 1)
        got = params_owner(ctx, [(1, "weight"), (2, "bias")])
        if got is None:
            lab = computed_conv(ctx, groups, is_transposed)
            return lab if lab is not None else ctx.unsupported_op("convolution with a computed weight")
        owner, (w, b) = got
        return conv(ctx, ctx.larg(0, "input"), ctx.arg(1, "weight"), owner, (w, b), groups, is_transposed)

    return handler


for _n in (1, 2, 3):
    register_op_handler(f"conv{_n}d", _functional_conv(False), LayerArgs(weight=1))
    register_op_handler(f"conv_transpose{_n}d", _functional_conv(True), LayerArgs(weight=1))
register_op_handler("convolution", _functional_conv(False, aten_convolution=True), LayerArgs(weight=1))


@handles_modules(nn.modules.conv._ConvNd)
def conv_module(ctx: OpContext, m: nn.Module) -> Labels:
    names = ("weight", "bias" if m.bias is not None else None)
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    return conv(ctx, ctx.larg(0), m.weight, ctx.module_name, names, m.groups, transposed)


# ---------------------------------------------------------------- linear, embedding, PReLU
def linear(ctx: OpContext, x_labels: Labels, weight: torch.Tensor, module: str, names) -> Labels:
    """Linear on the last dim; other labeled dims pass through."""
    w, b = names
    last = ctx.arg(0, "input").dim() - 1
    in_slots = ctx.table.block(module, param_members(module, (w, 1)), weight.shape[1])
    couple(ctx, (x_labels or {}).get(last), in_slots, ctx.where)
    out = dict((x_labels or {}).items())
    out[last] = ctx.table.block(module, param_members(module, (w, 0), (b, 0)), weight.shape[0])
    return out


@handles_ops("linear", layer=LayerArgs(weight=1))
def functional_linear(ctx: OpContext) -> Any:
    got = params_owner(ctx, [(1, "weight"), (2, "bias")])
    if got is not None:
        owner, names = got
        return linear(ctx, ctx.larg(0, "input"), ctx.arg(1, "weight"), owner, tuple(names))
    weight = param_owner(ctx, 1, "weight")
    if weight is None:
        return ctx.unsupported_op("linear with a computed weight")
    return _linear_computed_bias(ctx, *weight)


def _linear_computed_bias(ctx: OpContext, owner: str, weight_name: str) -> Labels:
    """``F.linear(x, self.w, bias)`` with a computed bias (BEiT/EVA: ``torch.cat((q_bias, k_bias, v_bias))``).

    The bias adds one value to each output channel, so its channels follow the weight's rows, as the
    operand of an elementwise add would; a bias whose channels cannot follow freezes them.
    """
    out = linear(ctx, ctx.larg(0, "input"), ctx.arg(1, "weight"), owner, (weight_name, None))
    rows = out[ctx.arg(0, "input").dim() - 1]
    bias, bias_labels = ctx.arg(2, "bias"), (ctx.larg(2, "bias") or {}).get(0)
    if bias_labels is not None:
        ctx.table.union(bias_labels, rows)
    elif isinstance(bias, torch.Tensor) and bias.dim() == 1 and bias.shape[0] > 1:
        ctx.table.freeze(rows, f"{ctx.where}: bias computed from channels that cannot be pruned")
    return out


@handles_modules(nn.Linear)
def linear_module(ctx: OpContext, m: nn.Module) -> Labels:
    names = ("weight", "bias" if m.bias is not None else None)
    return linear(ctx, ctx.larg(0), m.weight, ctx.module_name, names)


def embedding(ctx: OpContext, weight: torch.Tensor, module: str, name: str) -> Labels:
    """An embedding's output channels are the columns of its table."""
    nd = ctx.out.dim()
    return {nd - 1: ctx.table.block(module, param_members(module, (name, 1)), weight.shape[1])}


@handles_ops("embedding", layer=LayerArgs(weight=0, input=1))
def functional_embedding(ctx: OpContext) -> Any:
    """``F.embedding(input, weight)`` or ``aten.embedding(weight, indices)``."""
    weight_pos = 0 if isinstance(ctx.node.target, torch._ops.OpOverload) else 1
    p = param_owner(ctx, weight_pos, "weight")
    if p is None:
        return ctx.unsupported_op("embedding with a computed table")
    return embedding(ctx, ctx.arg(weight_pos, "weight"), p[0], p[1])


@handles_modules(nn.Embedding)
def embedding_module(ctx: OpContext, m: nn.Module) -> Labels:
    return embedding(ctx, m.weight, ctx.module_name, "weight")


def prelu(ctx: OpContext, x_labels: Labels, module: str, name: str, weight: torch.Tensor) -> Labels:
    """PReLU with one slope per channel ties the slopes to dim 1; a shared slope keeps every channel."""
    if weight.numel() > 1:
        slots = ctx.table.block(module, param_members(module, (name, 0)), weight.numel())
        couple(ctx, (x_labels or {}).get(1), slots, ctx.where)
    return dict(x_labels or {})


@handles_modules(nn.PReLU)
def prelu_module(ctx: OpContext, m: nn.Module) -> Labels:
    return prelu(ctx, ctx.larg(0), ctx.module_name, "weight", m.weight)


# ---------------------------------------------------------------- recurrent layers
@handles_modules(nn.RNNBase)
def recurrent_module(ctx: OpContext, m: nn.RNNBase) -> Any:
    """LSTM/GRU/RNN: each input channel is one column of the first layer's input weights (of both
    directions), so input channels can go (``input_size`` is written after slimming); the hidden units,
    the output channels, stay."""
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    if not isinstance(x, torch.Tensor) or x.shape[-1] != m.input_size or not isinstance(ctx.out, tuple):
        return ctx.unsupported_op(f"module {type(m).__name__} on a packed or unexpected input")
    name, last = ctx.module_name, x.dim() - 1
    weights = [f"weight_ih_l0{suffix}" for suffix in ("", "_reverse")[: 2 if m.bidirectional else 1]]
    cols = ctx.table.block(name, param_members(name, *((w, 1) for w in weights)), m.input_size)
    couple(ctx, lab.get(last), cols, ctx.where)
    ctx.constants.append((name, "input_size", cols))
    for d, other in lab.items():
        if d != last:
            ctx.table.freeze(other, f"{ctx.where}: channels on a sequence dim")
    for other in _labels_in(ctx.largs[1:]):  # initial states given as inputs keep their channels
        ctx.table.freeze(other, f"{ctx.where}: initial state of a recurrent layer")
    out, seq = structure_like(ctx.out), ctx.out[0]
    hidden = ctx.table.freeze_new(seq.shape[-1], f"{ctx.where}: hidden units of a recurrent layer")
    out[0] = {seq.dim() - 1: hidden}
    return out


def _labels_in(value: Any):
    """Every label array in nested labels (dicts of arrays inside lists/tuples)."""
    if isinstance(value, dict):
        yield from value.values()
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _labels_in(v)
