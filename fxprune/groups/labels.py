"""Channel labels of a tensor: for each channel-carrying dimension, the slot of every index along it."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from .slots import SlotTable

Labels = dict[int, np.ndarray]

__all__ = ["Labels", "broadcast_labels", "permute_labels", "reshape_labels"]


def _norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def broadcast_labels(
    table: SlotTable, operands: Sequence[tuple[tuple[int, ...], Labels | None]], out_shape: Sequence[int],
    where: str = "",
) -> Labels:
    """Labels of an elementwise op's output; couples operands' channels that meet at the same index.

    A channel dimension that meets a full-size operand without labels (a constant, an input) is frozen:
    that operand cannot lose channels. ``where`` (the op) is named in the freeze reasons.
    """
    at = f"{where}: " if where else ""
    out_nd = len(out_shape)
    out: Labels = {}
    for j in range(out_nd):
        labeled, blockers = [], False
        for shape, labels in operands:
            d = j - (out_nd - len(shape))
            if d < 0:
                continue
            size = shape[d]
            lab = labels.get(d) if labels else None
            if lab is not None and size == out_shape[j] and size > 1:
                labeled.append(lab)
            elif lab is not None:
                table.freeze(lab, f"{at}broadcast of a single channel")
            elif size == out_shape[j] and size > 1:
                blockers = True
        if not labeled:
            continue
        for lab in labeled[1:]:
            table.union(labeled[0], lab)
        if blockers:
            table.freeze(labeled[0], f"{at}elementwise op with a tensor whose channels cannot be removed")
        out[j] = labeled[0]
    return out


def permute_labels(labels: Labels, perm: Sequence[int]) -> Labels:
    """Labels after ``permute(perm)``."""
    ndim = len(perm)
    inv = {_norm_dim(p, ndim): i for i, p in enumerate(perm)}
    return {inv[d]: lab for d, lab in labels.items()}


def _groups(in_shape: Sequence[int], out_shape: Sequence[int]) -> list[tuple[list[int], list[int]]] | None:
    """Pair runs of input and output dims whose sizes multiply to the same number."""
    groups, i, j = [], 0, 0
    n_in, n_out = len(in_shape), len(out_shape)
    while i < n_in or j < n_out:
        gi, gj = [], []
        pi = pj = 1
        if i < n_in:
            gi.append(i)
            pi = in_shape[i]
            i += 1
        if j < n_out:
            gj.append(j)
            pj = out_shape[j]
            j += 1
        while pi != pj:
            if pi < pj and i < n_in:
                gi.append(i)
                pi *= in_shape[i]
                i += 1
            elif pj < pi and j < n_out:
                gj.append(j)
                pj *= out_shape[j]
                j += 1
            else:
                return None
        # absorb trailing size-1 dims into the current group
        while i < n_in and in_shape[i] == 1 and (j >= n_out or out_shape[j] != 1):
            gi.append(i)
            i += 1
        while j < n_out and out_shape[j] == 1 and (i >= n_in or in_shape[i] != 1):
            gj.append(j)
            j += 1
        groups.append((gi, gj))
    return groups


def reshape_labels(
    table: SlotTable,
    in_shape: Sequence[int],
    labels: Labels,
    out_shape: Sequence[int],
    adaptive: Sequence[bool] | None,
    where: str,
) -> Labels:
    """Labels after a reshape from ``in_shape`` to ``out_shape``.

    ``adaptive[j]`` says whether output dim j's size is computed at run time (from ``x.shape``, or -1)
    rather than written as a constant; ``None`` means every size is adaptive (``flatten``). Merging a
    channel dim with others keeps channel identity (``flatten`` into ``linear``). Splitting one channel
    dim into several keeps the single adaptive factor prunable and couples the others (heads, channel
    shuffle groups); a constant size on a channel dim freezes it.
    """
    if not labels:
        return {}
    groups = _groups(list(in_shape), list(out_shape))
    if groups is None:
        for lab in labels.values():
            table.freeze(lab, f"{where}: reshape not understood")
        return {}
    out: Labels = {}
    for gi, gj in groups:
        lab_dims = [d for d in gi if d in labels]
        if len(lab_dims) > 1:
            for d in lab_dims:
                table.freeze(labels[d], f"{where}: reshape mixes two channel dims")
        elif lab_dims:
            d = lab_dims[0]
            found = _reshape_run(table, in_shape, labels[d], d, out_shape, gi, gj, adaptive)
            if isinstance(found, str):
                table.freeze(labels[d], f"{where}: {found}")
            else:
                out[found[0]] = found[1]
    return out


def _reshape_run(
    table: SlotTable,
    in_shape: Sequence[int],
    lab: np.ndarray,
    d: int,
    out_shape: Sequence[int],
    gi: list[int],
    gj: list[int],
    adaptive: Sequence[bool] | None,
) -> tuple[int, np.ndarray] | str:
    """The (output dim, labels) of channel dim ``d`` of input run ``gi`` reshaped to output run ``gj``.

    Returns why the channels must freeze instead, when they cannot follow the reshape.
    """
    big_out = [j for j in gj if out_shape[j] > 1]
    if len(big_out) == 1:
        j = big_out[0]
        if adaptive is not None and not adaptive[j]:
            return f"{'channel' if len(gi) == 1 else 'flattened'} size written as a constant"
        # merge: row-major positions of the input group; the label follows the channel index
        return j, _run_labels(in_shape, lab, d, gi).reshape(-1)
    if [k for k in gi if in_shape[k] > 1] != [d]:
        mixed = _mixed_run(in_shape, lab, d, out_shape, gi, gj, adaptive)
        return mixed or "reshape mixes channels with other dims"
    # split of a channel dim into several: the one adaptive factor keeps the channels, the others couple
    free = [j for j in big_out if adaptive is None or adaptive[j]]
    split = lab.reshape([out_shape[j] for j in gj])
    if len(free) != 1:
        # labels repeated along all but one output dim (a flattened fan-in folded back): that dim has them
        varying = [j for j in big_out if np.ptp(split, axis=gj.index(j)).any()]
        if len(varying) != 1 or adaptive is not None:
            return "channel dim split with constant sizes"
        free = varying
    moved = np.moveaxis(split, gj.index(free[0]), -1).reshape(-1, out_shape[free[0]])
    for row in moved[1:]:
        table.union(moved[0], row)
    return free[0], moved[0].copy()


def _mixed_run(
    in_shape: Sequence[int],
    lab: np.ndarray,
    d: int,
    out_shape: Sequence[int],
    gi: list[int],
    gj: list[int],
    adaptive: Sequence[bool] | None,
) -> tuple[int, np.ndarray] | None:
    """Channel dim ``d`` reshaped together with other dims of its run (MobileViT's unfold,
    ``(B, C, H, W)`` to ``(B * C * n_h, p_h, n_w, p_w)``, and the fold back).

    The channels follow output dim ``j`` when the slot at every position of the run depends on ``j``'s
    index alone, ``j``'s size is computed at run time and every other size of the run is a constant:
    removing a channel then removes whole indices of ``j`` and leaves the rest of the run in order, which
    is what the slim model's reshape computes. Several of ``j``'s indices may carry one channel.
    """
    if adaptive is None:
        return None
    run = _run_labels(in_shape, lab, d, gi).reshape([out_shape[j] for j in gj])
    varying = [k for k, j in enumerate(gj) if out_shape[j] > 1 and np.ptp(run, axis=k).any()]
    free = [j for j in gj if out_shape[j] > 1 and adaptive[j]]
    if len(varying) != 1 or free != [gj[varying[0]]]:
        return None
    j = free[0]
    return j, np.moveaxis(run, varying[0], -1).reshape(-1, out_shape[j])[0].copy()


def _run_labels(in_shape: Sequence[int], lab: np.ndarray, d: int, gi: list[int]) -> np.ndarray:
    """The labels of channel dim ``d`` at every position of input run ``gi`` (a read-only broadcast)."""
    view = [1] * len(gi)
    view[gi.index(d)] = in_shape[d]
    return np.broadcast_to(lab.reshape(view), [in_shape[k] for k in gi])
