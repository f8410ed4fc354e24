"""Attention computed inside functions that tracing keeps whole: torchvision's Swin Transformer (v1 and v2).

``torchvision.models.swin_transformer`` wraps ``shifted_window_attention``, ``_get_relative_position_bias``
and ``_patch_merging_pad`` with ``torch.fx.wrap``: a trace shows one call for each, not the ops inside.
Their handlers are chosen by the function object (a function of the same name elsewhere stays unknown)
and encode what its body computes:

- ``shifted_window_attention(x, qkv_weight, proj_weight, bias, window_size, num_heads, ...)`` reads the
  head size as ``C // num_heads`` with ``C`` the width of ``x``, so the residual width, the qkv rows per
  projection and the projection's rows and columns are all ``num_heads * head_dim``. Heads go whole:
  head ``h`` takes its q, k and v rows, its projection columns, its row of the relative-position bias
  (the table's column, or the row of the MLP that generates it in v2), its ``logit_scale`` (v2), and the
  ``head_dim`` residual channels ``h * head_dim ...`` (input columns of qkv, output rows of the projection).
  ``head_dim`` stays as it is, so the ``head_dim ** -0.5`` scaling is unchanged and removal is exact;
  the module's ``num_heads`` attribute is written back after slimming.
- ``_get_relative_position_bias(table, index, window_size)`` gathers rows of a ``(positions, heads)`` table
  into ``(1, heads, N, N)``: the head labels move from the table's last dim to dim 1.
- ``_patch_merging_pad(x)`` pads the two spatial dims and concatenates four strided views along the
  channels: the output channels are ``k`` copies of the input channels (``k = 4``; 1 in versions that
  only pad).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import numpy as np
import torch.fx as fx

from .attr_constants import find_attribute, record_constants
from .context import OpContext
from .labels import Labels
from .layers import param_members
from .registry import handles_ops

__all__ = ["get_relative_position_bias", "patch_merging_pad", "shifted_window_attention"]

SWIN = "torchvision.models.swin_transformer"


def is_function(target: Any, module: str, name: str) -> bool:
    """Whether ``target`` is the function ``module.name`` (the object itself, not one with its name)."""
    return getattr(target, "__module__", None) == module and getattr(target, "__qualname__", None) == name


@functools.cache
def _signature(fn: Callable) -> inspect.Signature:
    return inspect.signature(fn)


def bound_arguments(ctx: OpContext) -> tuple[dict, dict, dict]:
    """The call's values, graph nodes and labels, each by parameter name (defaults filled in)."""
    sig = _signature(ctx.node.target)
    values = sig.bind(*ctx.args, **ctx.kwargs)
    values.apply_defaults()
    nodes = sig.bind(*ctx.node.args, **ctx.node.kwargs).arguments
    labels = sig.bind(*ctx.largs, **ctx.lkwargs).arguments
    return values.arguments, nodes, labels


def _param(nodes: dict, name: str) -> tuple[str, str] | None:
    """``(owner module, attribute)`` of a parameter argument read straight from a module, else None."""
    node = nodes.get(name)
    if isinstance(node, fx.Node) and node.op == "get_attr":
        owner, _, attr = node.target.rpartition(".")
        return owner, attr
    return None


def _linear_blocks(ctx: OpContext, nodes: dict, weight: str, bias: str, shape: tuple) -> tuple | None:
    """(rows, columns) slots of a linear layer given by its weight (and bias) arguments, else None."""
    w, b = _param(nodes, weight), _param(nodes, bias) if nodes.get(bias) is not None else None
    if w is None or (nodes.get(bias) is not None and (b is None or b[0] != w[0])):
        return None
    owner = w[0]
    names = param_members(owner, (w[1], 0), (b[1] if b else None, 0))
    rows = ctx.table.block(owner, names, shape[0])
    cols = ctx.table.block(owner, param_members(owner, (w[1], 1)), shape[1])
    return rows, cols


def _tie_per_head(ctx: OpContext, heads: np.ndarray, lab: Labels | None, t: Any, dim: int, what: str) -> None:
    """Tie dim ``dim`` of a per-head tensor to the heads; the other labeled dims freeze."""
    lab = lab or {}
    d = dim % t.dim()
    for other, a in lab.items():
        if other != d:
            ctx.table.freeze(a, f"{ctx.where}: {what} channels on a non-head dim")
    if t.shape[d] == 1:
        return
    if d in lab:
        ctx.table.union(heads, lab[d])
        ctx.table.mark_passive(lab[d])  # a layer with one row per head (v2's bias MLP) follows them
    else:
        ctx.table.freeze(heads, f"{ctx.where}: {what} comes from a tensor that cannot lose heads")


@handles_ops("shifted_window_attention")
def shifted_window_attention(ctx: OpContext) -> Any:
    """torchvision's Swin window attention (v1, and v2 with ``logit_scale``): whole heads are removed."""
    if not is_function(ctx.node.target, SWIN, "shifted_window_attention"):
        return ctx.unsupported_op("op not understood by the channel analysis")
    values, nodes, labels = bound_arguments(ctx)
    x, nh = values["input"], values["num_heads"]
    c = x.shape[-1]
    if not isinstance(nh, int) or c % nh:
        return ctx.unsupported_op("window attention with a computed head count")
    attr = find_attribute(ctx, nh)
    qkv = _linear_blocks(ctx, nodes, "qkv_weight", "qkv_bias", (3 * c, c))
    proj = _linear_blocks(ctx, nodes, "proj_weight", "proj_bias", (c, c))
    if attr is None or qkv is None or proj is None:
        return ctx.unsupported_op("window attention whose head count or weights are not a module's own")
    hd, table = c // nh, ctx.table
    rows = qkv[0].reshape(3, nh, hd)
    heads = rows[0, :, 0]
    table.union(heads[None, :, None], rows)
    for part in (qkv[1], proj[0], proj[1]):
        table.union(heads[:, None], part.reshape(nh, hd))
    _tie_per_head(ctx, heads, labels["relative_position_bias"], values["relative_position_bias"], -3, "bias")
    if values["logit_scale"] is not None:
        _tie_per_head(ctx, heads, labels["logit_scale"], values["logit_scale"], 0, "logit scale")
    _tie_per_head(ctx, qkv[1], labels["input"], x, -1, "input")
    record_constants(ctx, [(*attr, heads)])
    return {x.dim() - 1: proj[0]}


@handles_ops("_get_relative_position_bias")
def get_relative_position_bias(ctx: OpContext) -> Any:
    """``table[index].view(N, N, -1).permute(2, 0, 1).unsqueeze(0)``: the table's head dim becomes dim 1."""
    if not is_function(ctx.node.target, SWIN, "_get_relative_position_bias"):
        return ctx.unsupported_op("op not understood by the channel analysis")
    values, _, labels = bound_arguments(ctx)
    lab = dict(labels["relative_position_bias_table"] or {})
    for a in (lab.pop(0, None), *(labels["relative_position_index"] or {}).values()):
        if a is not None:
            ctx.table.freeze(a, f"{ctx.where}: positions gathered by an index")
    return {1: lab[1]} if 1 in lab else {}


@handles_ops("_patch_merging_pad")
def patch_merging_pad(ctx: OpContext) -> Any:
    """Padding of the two spatial dims, then ``k`` strided views concatenated along the channels."""
    if not is_function(ctx.node.target, SWIN, "_patch_merging_pad"):
        return ctx.unsupported_op("op not understood by the channel analysis")
    x = ctx.arg(0, "x")
    lab = dict(ctx.larg(0, "x") or {})
    last = x.dim() - 1
    for d in [d for d in lab if d != last]:
        ctx.table.freeze(lab.pop(d), f"{ctx.where}: channels on a padded spatial dim")
    copies, rest = divmod(ctx.out.shape[-1], x.shape[-1])
    if last not in lab:
        return {}
    if rest:
        return ctx.unsupported_op("patch merging with an unexpected width")
    return {last: np.tile(lab[last], copies)}
