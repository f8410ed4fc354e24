"""Indexing: ``x[...]``, ``getitem`` on lists, dicts and sizes, and the aten ``slice``/``select`` ops."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .attr_constants import record_constants, slice_refs
from .context import OpContext, iter_labels, structure_like
from .labels import Labels
from .registry import handles_ops
from .sdpa_scale import note_shapes
from .sizes import IntInfo, SizeInfo

__all__ = ["aten_select", "aten_slice", "getitem", "index_labels", "setitem"]


def _is_full(idx: slice) -> bool:
    return idx == slice(None) or (idx.start in (None, 0) and idx.stop is None and idx.step in (None, 1))


def _expand_index(index: Any, ndim: int) -> list:
    """The index with ``...`` replaced by as many full slices as it stands for."""
    index = index if isinstance(index, tuple) else (index,)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    out = []
    for idx in index:
        out.extend([slice(None)] * (ndim - n_real) if idx is Ellipsis else [idx])
    return out


def _gathered(ctx: OpContext, x: torch.Tensor, lab: Labels, index: Any) -> Labels | None:
    """Labels of ``x[:, idx]`` (one integer index tensor, full slices elsewhere), else None.

    The indexed dim's channels freeze (positions picked by value, as a relative-position table's rows);
    the index's dims take its place; the other dims keep their channels (the table's heads).
    """
    items = _expand_index(index, x.dim())
    if any(i is None for i in items):
        return None
    items += [slice(None)] * (x.dim() - len(items))  # trailing dims not written are taken whole
    picked = [k for k, i in enumerate(items) if isinstance(i, torch.Tensor)]
    if len(picked) != 1:
        return None
    k = picked[0]
    idx = items[k]
    if idx.dtype == torch.bool or idx.is_floating_point():
        return None
    if any(not (isinstance(i, slice) and _is_full(i)) for j, i in enumerate(items) if j != k):
        return None
    for a in [lab.get(k), *iter_labels(ctx.largs[1:])]:
        if a is not None:
            ctx.table.freeze(a, f"{ctx.where}: positions gathered by an index tensor")
    for d, a in lab.items():  # a table per position computed by a layer (Swin V2's bias MLP, one row a head)
        if d != k:
            ctx.table.mark_passive(a)
    return {d if d < k else d + idx.dim() - 1: a for d, a in lab.items() if d != k}


def index_labels(ctx: OpContext, x: torch.Tensor, lab: Labels, index: Any) -> Labels:
    """Labels of ``x[index]``: full slices keep a channel dim; ints, partial slices and tensors freeze it."""
    gathered = _gathered(ctx, x, lab, index) if lab else None
    if gathered is not None:
        return gathered
    out: Labels = {}
    d_in = d_out = 0
    for idx in _expand_index(index, x.dim()):
        if idx is None:
            d_out += 1
            continue
        a = lab.get(d_in)
        if isinstance(idx, int):
            if a is not None:
                ctx.table.freeze(a, f"{ctx.where}: one channel taken by index")
            d_in += 1
            continue
        if not isinstance(idx, slice):
            if a is not None:
                ctx.table.freeze(a, f"{ctx.where}: advanced indexing on channels")
            return ctx.unsupported_op("advanced indexing") if any(True for _ in iter_labels(lab)) else {}
        if a is not None and _is_full(idx):
            out[d_out] = a
        elif a is not None:
            out_a = _attribute_slice(ctx, a, idx)
            if out_a is not None:
                out[d_out] = out_a
        d_in += 1
        d_out += 1
    out.update({d_out + k: lab[d] for k, d in enumerate(range(d_in, x.dim())) if d in lab})
    return out


def _bounds_over_frozen(ctx: OpContext, a, idx: slice) -> bool:
    """Every bound of ``idx`` is measured from an edge across channels that are never removed
    (``out[..., :-1]`` dropping a padded constant column): the bound stays right after pruning."""
    if idx.step not in (None, 1):
        return False
    spans = []
    for bound in (idx.start, idx.stop):
        if bound is not None:
            spans.append(a[:bound] if bound >= 0 else a[bound:])
    frozen = ctx.table.frozen
    return all(int(r) in frozen for span in spans for r in np.unique(ctx.table.roots(span)))


def _attribute_slice(ctx: OpContext, a, idx: slice):
    """Labels of a channel slice whose bounds follow pruning (module attributes, or counted across
    channels that stay), else freeze: None."""
    if _bounds_over_frozen(ctx, a, idx):
        return a[idx]
    refs = slice_refs(ctx, idx, len(a))
    if refs is None:
        ctx.table.freeze(a, f"{ctx.where}: channel slice with constant bounds")
        return None
    record_constants(ctx, [(module, attr, a[:bound]) for (module, attr), bound in refs])
    return a[idx]


@handles_ops("getitem")
def getitem(ctx: OpContext) -> Any:
    """``obj[index]`` on a tensor, a ``torch.Size``, a list/tuple or a dict."""
    obj, index = ctx.args[0], ctx.args[1]
    lab = ctx.largs[0]
    if isinstance(lab, SizeInfo):
        picked = lab.dims[index]
        if isinstance(index, int):
            return IntInfo([picked] if picked is not None else [])
        return SizeInfo(list(picked))
    if isinstance(obj, torch.Tensor):
        note_shapes(ctx)
        return index_labels(ctx, obj, lab or {}, index)
    if isinstance(obj, (list, tuple)) and isinstance(lab, (list, tuple)):
        return lab[index]
    if isinstance(obj, dict) and isinstance(lab, dict):
        return lab.get(index)
    return structure_like(ctx.out)


@handles_ops("setitem")
def setitem(ctx: OpContext) -> Any:
    """``x[index] = value`` in place: where the index takes a channel dim of ``x`` whole, the value's
    channels on that dim go with x's; a channel dim written in part, a value with channels on a dim of the
    region without them, or a value sized along a channel dim without its labels freezes them."""
    x, index, value = ctx.args[0], ctx.args[1], ctx.args[2] if len(ctx.args) > 2 else None
    if not isinstance(x, torch.Tensor):
        return structure_like(ctx.out)
    region = index_labels(ctx, x, ctx.larg(0) or {}, index)
    shape = tuple(x[index].shape)
    vshape = tuple(value.shape) if isinstance(value, torch.Tensor) else ()
    vlab = (ctx.larg(2) or {}) if vshape else {}
    off = len(shape) - len(vshape)
    for j in range(len(shape)):
        a, b = region.get(j), vlab.get(j - off)
        size = vshape[j - off] if j >= off else 1
        if a is not None and b is not None and len(a) == len(b):
            ctx.table.union(a, b)
            continue
        for lab in (a if size > 1 or b is not None else None, b):
            if lab is not None:
                ctx.table.freeze(lab, f"{ctx.where}: value written in place does not follow the channels")
    return structure_like(ctx.out)


@handles_ops("slice")
def aten_slice(ctx: OpContext) -> Labels:
    """``aten.slice(x, dim, start, end, step)``: a full slice keeps the channels."""
    x = ctx.arg(0, "input")
    dim = ctx.arg(1, "dim", 0) % x.dim()
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    idx = [slice(None)] * x.dim()
    full = (start in (None, 0)) and (end is None or end >= x.shape[dim]) and step in (None, 1)
    idx[dim] = slice(None) if full else slice(start, end, step)
    return index_labels(ctx, x, ctx.larg(0) or {}, tuple(idx))


@handles_ops("select")
def aten_select(ctx: OpContext) -> Labels:
    """``aten.select(x, dim, index)``: one position of a dim."""
    x = ctx.arg(0, "input")
    idx: list[Any] = [slice(None)] * x.dim()
    idx[ctx.arg(1, "dim") % x.dim()] = int(ctx.arg(2, "index"))
    return index_labels(ctx, x, ctx.larg(0) or {}, tuple(idx))
