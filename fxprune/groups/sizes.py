"""Where run-time sizes come from: ``C = x.shape[1]`` remembers the channel slots of x's dim 1.

A reshape whose size argument was read from a channel dim must keep that dim's width consistent
with its own output (MaxViT reshapes attention output to the *input's* width).
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .context import OpContext, structure_like
from .labels import Labels
from .registry import handles_ops

__all__ = [
    "IntInfo",
    "SizeInfo",
    "check_size_sources",
    "merge",
    "non_tensor",
    "size",
    "size_of",
    "sourceless_constants",
    "view_size_args",
]


def view_size_args(node: fx.Node) -> list:
    """The size arguments of a view-like call as written: ``x.view(B, N, -1)``, ``x.view((B, N, -1))`` or
    ``torch.reshape(x, (B, N, -1))`` all give ``[B, N, -1]`` (ints, or the nodes that compute them)."""
    if node.op == "call_method":
        args = list(node.args[1:])
        return list(args[0]) if len(args) == 1 and isinstance(args[0], (list, tuple)) else args
    args = list(node.args[1:2])
    return list(args[0]) if args and isinstance(args[0], (list, tuple)) else args


@dataclass
class SizeInfo:
    """A ``torch.Size`` read from a tensor: the labels of each of its dims (None = not channels)."""

    dims: list[np.ndarray | None]


@dataclass
class IntInfo:
    """An int computed from sizes: the channel label arrays it was derived from."""

    sources: list[np.ndarray] = field(default_factory=list)


def size_of(labels: dict | None, ndim: int, dim: int | None) -> SizeInfo | IntInfo:
    """The provenance of ``x.size()`` (``dim`` None) or ``x.size(dim)`` for a tensor with ``labels``."""
    labels = labels or {}
    if dim is None:
        return SizeInfo([labels.get(d) for d in range(ndim)])
    d = dim % ndim
    return IntInfo([labels[d]] if d in labels else [])


def merge(*infos) -> IntInfo | None:
    """Provenance of an arithmetic result."""
    sources = [s for i in infos if isinstance(i, IntInfo) for s in i.sources]
    return IntInfo(sources) if sources else None


@handles_ops("size", "getattr", "sym_size")
def size(ctx: OpContext) -> Any:
    """``x.size()``, ``x.size(d)``, ``x.shape``: remember which channel slots the sizes came from."""
    x = ctx.arg(0, "input")
    if not isinstance(x, torch.Tensor):
        return structure_like(ctx.out)
    if ctx.op_name == "getattr":
        if ctx.args[1] != "shape":
            return structure_like(ctx.out)
        return size_of(ctx.larg(0), x.dim(), None)
    return size_of(ctx.larg(0), x.dim(), ctx.arg(1, "dim"))


@handles_ops(
    "dim",
    "numel",
    "_assert",
    "_assert_tensor_metadata",
    "sym_constrain_range_for_size",
    "_assert_scalar",
    "le_int",
    "zeros_like",
)
def non_tensor(ctx: OpContext) -> Any:
    """Ops whose result carries no channels (dims, counts, assertions, fresh zeros): nothing to track."""
    return structure_like(ctx.out)


def sourceless_constants(ctx: OpContext, adaptive: list[bool]) -> None:
    """Sizes computed at run time from no channel dim (the batch size, a head count read from a dim the
    analysis does not prune) keep their value after pruning: they count as constants."""
    infos = _shape_infos(ctx)
    node_args = view_size_args(ctx.node)
    for j, arg in enumerate(node_args[: len(adaptive)]):
        info = infos[j] if j < len(infos) else None
        if isinstance(arg, fx.Node) and not (isinstance(info, IntInfo) and info.sources):
            adaptive[j] = False


def _shape_infos(ctx: OpContext) -> list:
    """The size provenance (:class:`.sizes.IntInfo`) of each shape argument of a view."""
    infos = ctx.largs[1:] if ctx.node.op == "call_method" else ctx.largs[1:2]
    if len(infos) == 1 and isinstance(infos[0], (list, tuple)):
        infos = infos[0]
    return list(infos)


def _divisor(arg: object) -> int:
    """``k`` when a size argument is ``C // k`` with a literal ``k`` (a head size ``C // num_heads``)."""
    if isinstance(arg, fx.Node) and arg.target is operator.floordiv and type(arg.args[1]) is int:
        return arg.args[1]
    return 1


def check_size_sources(ctx: OpContext, own: Labels, out: Labels) -> None:
    """Sizes read from another tensor's channel dim must follow this output's channels.

    ``C // k`` (a head size read from the block's width) ties each ``k``-th part of the ``C`` channels,
    in order, to the head channels: removing head channel ``d`` removes channel ``d`` of every part, so
    the width stays ``k`` times the head size.

    A channel dim sized at run time by a number read from no channel dim (the width of a model input)
    cannot follow pruning: it freezes.
    """
    shape_labels = _shape_infos(ctx)
    node_args = view_size_args(ctx.node)
    own_roots = [set(ctx.table.roots(a).tolist()) for a in own.values()]
    for j, info in enumerate(shape_labels):
        sourceless = not isinstance(info, IntInfo) or not info.sources
        if sourceless and j in out and j < len(node_args) and isinstance(node_args[j], fx.Node):
            ctx.table.freeze(out[j], f"{ctx.where}: channel size read from a dim that is not pruned")
        if not isinstance(info, IntInfo):
            continue
        for src in info.sources:
            roots = set(ctx.table.roots(src).tolist())
            if any(roots == r for r in own_roots):
                continue  # read from the tensor being reshaped
            target = out.get(j)
            parts = _divisor(node_args[j]) if j < len(node_args) else 1
            if target is not None and len(target) == len(src):
                ctx.table.union(src, target)
            elif target is not None and parts > 1 and len(src) == parts * len(target):
                for row in np.asarray(src).reshape(parts, len(target)):
                    ctx.table.union(row, target)  # C // k: each k-th of C goes with one channel
            elif target is None and _tie_to_heads(ctx, src, parts, out, j):
                continue
            else:
                ctx.table.freeze(src, f"{ctx.where}: size read from a channel dim of another tensor")
                if target is not None:
                    ctx.table.freeze(target, f"{ctx.where}: size read from a channel dim of another tensor")


def _tie_to_heads(ctx: OpContext, src: np.ndarray, parts: int, out: Labels, j: int) -> bool:
    """A head size ``C // k`` that keeps its width while the ``k`` heads before it go whole (DaViT's channel
    attention): each ``k``-th part of ``C``, in order, goes with its head, so ``C // k`` stays."""
    heads = [a for d, a in out.items() if d < j and len(a) == parts]
    if parts < 2 or len(src) % parts or len(heads) != 1:
        return False
    for h, row in enumerate(np.asarray(src).reshape(parts, -1)):
        ctx.table.union(row, heads[0][h : h + 1])
    return True
