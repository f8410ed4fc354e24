"""Where run-time sizes come from: ``C = x.shape[1]`` remembers the channel slots of x's dim 1.

A reshape whose size argument was read from a channel dim must keep that dim's width consistent
with its own output (MaxViT reshapes attention output to the *input's* width).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .context import OpContext, structure_like
from .registry import handles_ops

__all__ = ["IntInfo", "SizeInfo", "merge", "non_tensor", "size", "size_of", "view_size_args"]


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
