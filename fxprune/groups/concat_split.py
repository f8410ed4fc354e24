"""Concatenation and splitting: cat/stack join channel runs, split/chunk/unbind cut them."""

from __future__ import annotations

import numpy as np
import torch

from .attr_constants import record_constants, split_refs
from .attr_expressions import find_remainder, follow_divided_split
from .context import OpContext
from .labels import Labels, broadcast_labels
from .registry import handles_ops
from .sdpa_scale import note_shapes

__all__ = ["cat", "repeat_interleave", "split", "stack", "tile", "unbind"]


def _dim_arg(ctx: OpContext, ndim: int, position: int) -> int:
    dim = ctx.arg(position, "dim", 0)
    return dim + ndim if dim < 0 else dim


@handles_ops("cat", "concat", "concatenate")
def cat(ctx: OpContext) -> Labels:
    """Labels of the joined dim are the inputs' labels end to end (unlabeled inputs add frozen slots)."""
    tensors = list(ctx.arg(0, "tensors"))
    labs = [lab or {} for lab in (ctx.larg(0, "tensors") or [None] * len(tensors))]
    dim = _dim_arg(ctx, ctx.out.dim(), 1)
    out: Labels = {}
    if any(lab.get(dim) is not None for lab in labs):
        out[dim] = np.concatenate(
            [
                lab[dim]
                if lab.get(dim) is not None
                else ctx.table.freeze_new(t.shape[dim], f"{ctx.where}: concatenated constant")
                for lab, t in zip(labs, tensors)
            ]
        )
    # the other dims meet elementwise, as in a broadcast with the joined dim set to 1
    others = [
        (tuple(t.shape[:dim]) + (1,) + tuple(t.shape[dim + 1 :]), {d: a for d, a in lab.items() if d != dim})
        for t, lab in zip(tensors, labs)
    ]
    shape = list(ctx.out_shape)
    shape[dim] = 1
    out.update({d: a for d, a in broadcast_labels(ctx.table, others, shape).items() if d != dim})
    return out


@handles_ops("stack")
def stack(ctx: OpContext) -> Labels:
    tensors = list(ctx.arg(0, "tensors"))
    labs = list(ctx.larg(0, "tensors") or [None] * len(tensors))
    dim = _dim_arg(ctx, ctx.out.dim(), 1)
    merged = broadcast_labels(
        ctx.table, [(tuple(t.shape), lab) for t, lab in zip(tensors, labs)], tuple(tensors[0].shape)
    )
    return {d + (1 if d >= dim else 0): a for d, a in merged.items()}


@handles_ops("tile", "repeat")
def tile(ctx: OpContext) -> Labels:
    """``x.tile(reps)``/``x.repeat(reps)``: copies of ``x`` end to end along each dim, as ``cat`` of copies
    (a channel dim repeated ``r`` times carries its labels ``r`` times; a position embedding tiled over
    windows keeps its channels)."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    reps = list(ctx.args[1:]) if len(ctx.args) > 2 else ctx.arg(1, "dims", ctx.kwargs.get("repeats"))
    reps = [reps] if isinstance(reps, int) else list(reps or ())
    if not all(isinstance(r, int) for r in reps):
        return ctx.unsupported_op("repeat counts computed at run time")
    off = ctx.out.dim() - x.dim()
    reps = [1] * (ctx.out.dim() - len(reps)) + reps
    return {d + off: np.tile(a, reps[d + off]) if reps[d + off] > 1 else a for d, a in lab.items()}


@handles_ops("repeat_interleave")
def repeat_interleave(ctx: OpContext) -> Labels:
    """``x.repeat_interleave(n, dim)``: each index of ``dim`` repeated ``n`` times in place (a global query
    repeated over the windows of its image keeps its channels; a channel dim carries each label ``n``
    times)."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    n, dim = ctx.arg(1, "repeats"), ctx.arg(2, "dim")
    if not isinstance(x, torch.Tensor) or not lab:
        return {}
    if type(n) is not int or dim is None:
        return ctx.unsupported_op("repeat_interleave with counts per index or without a dim")
    dim %= x.dim()
    return {d: np.repeat(a, n) if d == dim else a for d, a in lab.items()}


@handles_ops("chunk", "split", "split_with_sizes", "tensor_split")
def split(ctx: OpContext) -> list:
    """Pieces of a channel dim stay prunable when their sizes follow the width (``chunk``): equal parts."""
    note_shapes(ctx)
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    dim = _dim_arg(ctx, x.dim(), 2)
    sections = ctx.arg(1, "chunks") if ctx.op_name == "chunk" else ctx.arg(1, "split_size_or_sections")
    sizes = [int(o.shape[dim]) for o in ctx.out]
    parts = [{d: a for d, a in lab.items() if d != dim} for _ in ctx.out]
    a = lab.get(dim)
    if a is None:
        return parts
    # chunk() recomputes its sizes from the width; in export graphs it appears as split(int)
    adaptive = ctx.op_name == "chunk" or (
        ctx.graph_is_export and isinstance(sections, int) and len(set(sizes)) == 1
    )
    if not adaptive:
        return _attribute_split(ctx, a, sections, sizes, parts, dim)
    bounds = np.cumsum([0, *sizes])
    pieces = [a[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
    ctx.constraints.append(("equal_parts", pieces, ctx.where))
    for p, piece in zip(parts, pieces):
        p[dim] = piece
    return parts


@handles_ops("unbind")
def unbind(ctx: OpContext) -> list:
    note_shapes(ctx)
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    dim = ctx.arg(1, "dim", 0) % x.dim()
    if dim in lab:
        ctx.table.freeze(lab[dim], f"{ctx.where}: channels taken one by one")
    rest = {d - (1 if d > dim else 0): a for d, a in lab.items() if d != dim}
    return [dict(rest) for _ in ctx.out]


def _remainder(ctx: OpContext, refs: list, sizes: list[int], width: int):
    """The attribute holding the whole width when exactly one piece is ``self.TOTAL`` minus the others'
    attributes (:func:`.attr_expressions.find_remainder`), else None."""
    missing = [i for i, r in enumerate(refs) if r is None]
    if len(missing) != 1 or any(r[0] != ctx.module_name for r in refs if r is not None):
        return None
    return find_remainder(ctx, sizes[missing[0]], width, [r[1] for r in refs if r is not None])


def _attribute_split(
    ctx: OpContext, a: np.ndarray, sections: object, sizes: list[int], parts: list, dim: int
) -> list:
    """Split sizes read from module attributes follow the pieces; pieces sized by a literal freeze."""
    if follow_divided_split(ctx, a, sections, sizes, parts, dim):
        return parts
    refs = split_refs(ctx, sections, sizes)
    bounds = np.cumsum([0, *sizes])
    total = _remainder(ctx, refs, sizes, len(a))
    records = [(*total, a)] if total is not None else []  # the whole width, written as the kept total
    same: dict = {}
    for p, ref, s, e in zip(parts, refs, bounds[:-1], bounds[1:]):
        if ref is None and total is not None:
            p[dim] = a[s:e]  # forward computes this piece from the total and the others
            continue
        if ref is None:
            ctx.table.freeze(a[s:e], f"{ctx.where}: split sizes written as constants")
            continue
        p[dim] = a[s:e]
        records.append((*ref, a[s:e]))
        same.setdefault(ref, []).append(a[s:e])
    record_constants(ctx, records)
    for pieces in same.values():
        if len(pieces) > 1:  # one attribute sizes several pieces: they stay equal
            ctx.constraints.append(("equal_parts", pieces, ctx.where))
    return parts
