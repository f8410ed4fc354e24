"""How the dims of a view, transpose, reshape, slice, pad or reduction follow from its input's dims.

Used by :mod:`fxprune.groups.costs` to follow which channel labels scale each dim of a tensor inside a
layer. A dim is a tuple of factor indices (``()``: never changes width) or None (cannot be followed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

__all__ = ["reshape_dims", "view_dims"]

aten = torch.ops.aten
Dim = tuple[int, ...] | None


def _norm(d: int, n: int) -> int:
    return d + n if d < 0 else d


def reshape_dims(size: Sequence[int], dims: Sequence[Dim], out: Sequence[int]) -> list[Dim]:
    """Dims of ``x.reshape(out)``: runs of dims with equal products map onto each other.

    A merged run carries every factor of its input dims; a split run puts them on its last dim wider than
    one (FLOP formulas are products of dims, so where the factor sits in a run does not change them).
    """
    res: list[Dim] = [()] * len(out)
    i = j = 0
    while i < len(size) or j < len(out):
        if i < len(size) and size[i] == 1:
            i += 1
            continue
        if j < len(out) and out[j] == 1:
            j += 1
            continue
        if i >= len(size) or j >= len(out):
            return [None] * len(out)
        gi, gj, pi, pj = [i], [j], size[i], out[j]
        while pi != pj:
            if pi < pj and i + 1 < len(size):
                i += 1
                gi.append(i)
                pi *= size[i]
            elif pj < pi and j + 1 < len(out):
                j += 1
                gj.append(j)
                pj *= out[j]
            else:
                return [None] * len(out)
        i, j = i + 1, j + 1
        merged: Dim = ()
        for k in gi:
            merged = None if merged is None or dims[k] is None else merged + dims[k]
        wide = [k for k in gj if out[k] > 1]
        res[wide[-1] if wide else gj[-1]] = merged
    return res


def _piece(x: torch.Tensor, dims: Sequence[Dim], d: int, out: torch.Tensor, keep_dim: bool) -> list[Dim]:
    """Dims of a piece of ``x`` cut along ``d`` (a slice, a split part, or one index when not kept)."""
    d = _norm(d, x.dim())
    res = list(dims)
    if not keep_dim:
        del res[d]
    elif out.shape[d] != x.shape[d] and dims[d]:
        res[d] = None  # part of a channel dim: its width after pruning is not known here
    return res


def view_dims(packet: Any, args: tuple, dims: Sequence[Dim], out: torch.Tensor) -> list[Dim] | None:
    """Dims of an output of a view-like op whose first argument has ``dims``; None for other ops."""
    x = args[0]
    n = x.dim()
    if packet is aten.t:
        return list(reversed(dims))
    if packet is aten.transpose:
        a, b = _norm(args[1], n), _norm(args[2], n)
        res = list(dims)
        res[a], res[b] = res[b], res[a]
        return res
    if packet is aten.permute:
        return [dims[_norm(p, n)] for p in args[1]]
    if packet in (aten.view, aten._unsafe_view, aten.reshape, aten._reshape_alias):
        return reshape_dims(tuple(x.shape), dims, tuple(out.shape))
    if packet is aten.expand:
        lead = out.dim() - n
        return [()] * lead + [dims[k] if x.shape[k] == out.shape[lead + k] else () for k in range(n)]
    if packet in (aten.unsqueeze, aten.squeeze):  # size-1 dims come and go
        return reshape_dims(tuple(x.shape), dims, tuple(out.shape))
    if packet is aten.select:
        return _piece(x, dims, args[1], out, keep_dim=False)
    if packet in (aten.slice, aten.narrow):
        return _piece(x, dims, args[1] if len(args) > 1 else 0, out, keep_dim=True)
    if packet in (aten.split, aten.split_with_sizes):
        return _piece(x, dims, args[2] if len(args) > 2 else 0, out, keep_dim=True)
    if packet is aten.unbind:
        return _piece(x, dims, args[1] if len(args) > 1 else 0, out, keep_dim=False)
    if packet is aten.constant_pad_nd:
        return _padded(dims, args[1])
    if packet in (aten.sum, aten.mean, aten.amax, aten.amin) and len(args) > 1 and args[1] is not None:
        return _reduced(dims, args[1], len(args) > 2 and bool(args[2]))
    if packet is aten.linalg_vector_norm and len(args) > 2 and args[2] is not None:  # (x, ord, dim, keepdim)
        return _reduced(dims, args[2], len(args) > 3 and bool(args[3]))
    return None


def _reduced(dims: Sequence[Dim], reduce: Any, keepdim: bool) -> list[Dim]:
    """Dims of a reduction over ``reduce`` (an int or a list of ints)."""
    n = len(dims)
    gone = {_norm(d, n) for d in (reduce if isinstance(reduce, (list, tuple)) else [reduce])}
    return [() if k in gone else dims[k] for k in range(n) if keepdim or k not in gone]


def _padded(dims: Sequence[Dim], pad: Sequence[int]) -> list[Dim]:
    """Dims of ``constant_pad_nd``: ``pad`` lists (before, after) from the last dim backwards; a padded dim
    keeps its width only when no channel label scales it."""
    res = list(dims)
    for i in range(len(pad) // 2):
        k = len(dims) - 1 - i
        if (pad[2 * i] or pad[2 * i + 1]) and dims[k]:
            res[k] = None
    return res
