"""Magnitude criteria: L1/L2 norm of every slice of an atom, over the whole group (Li et al. 2017)."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

from .parameters import parameter, parameter_table
from .registry import register_importance


def magnitude_scores(model: nn.Module, group, p: int = 2, mean: bool = False) -> np.ndarray:
    """Per atom, the p-norm over all the group's parameter slices (buffers such as BN statistics excluded).

    With ``mean``, each atom's sum is divided by the number of slices it has, so a channel read by many
    layers (DenseNet's early features) does not outrank one read by a few just for being read more.
    """
    scores = np.zeros(group.width, dtype=np.float64)
    counts = np.zeros(group.width, dtype=np.float64)
    with parameter_table(model), torch.no_grad():
        for b in group.blocks:
            idx = group.block_atom_index[b.base]
            ok = idx >= 0
            every = bool(ok.all())
            atoms = idx if every else idx[ok]
            found = 0
            for name, dim in b.members:
                t = parameter(model, name)
                if t is None:
                    continue
                per = _slice_power_sums(t.float(), dim, p).double().numpy()  # no_grad: nothing to detach
                np.add.at(scores, atoms, per if every else per[ok])
                found += 1
            if found:
                np.add.at(counts, atoms, float(found))  # whole numbers: the same sums as one at a time
    if mean:
        scores = scores / np.maximum(counts, 1.0)
    return scores ** (1.0 / p)


def _slice_power_sums(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """Sum of ``|x| ** p`` over each slice of ``t`` along ``dim``.

    A contiguous tensor is viewed as ``(before, channels, after)``: the norm kernel reduces the contiguous
    ``after`` part without a temporary copy, and only the smaller ``(before, channels)`` result is summed
    (several times faster than raising the whole tensor to the power first when ``after`` is long).
    """
    if t.dim() == 0:
        return t.abs().pow(p).reshape(1)
    after = math.prod(t.shape[dim + 1 :])
    if t.is_contiguous() and after >= 4:  # else the reduced copy is as large as the power of the tensor
        n, before = t.shape[dim], math.prod(t.shape[:dim])
        if before == 1:  # one row: its sum over the (single) leading row is the row itself
            inner = torch.linalg.vector_norm(t.reshape(n, -1), ord=p, dim=1)
            return inner if p == 1 else inner.pow(p)
        inner = torch.linalg.vector_norm(t.reshape(before, n, -1), ord=p, dim=2)
        return (inner if p == 1 else inner.pow(p)).sum(0)
    dims = [d for d in range(t.dim()) if d != dim]
    per = t.square() if p == 2 else t.abs().pow(p)  # same values, one pass fewer
    return per.sum(dims) if dims else per


@register_importance("l1")
def l1(model: nn.Module, group) -> np.ndarray:
    return magnitude_scores(model, group, 1, mean=True)


@register_importance("l2")
def l2(model: nn.Module, group) -> np.ndarray:
    return magnitude_scores(model, group, 2, mean=True)


@register_importance("random")
def random(model: nn.Module, group) -> np.ndarray:
    return np.random.default_rng(group.id).random(group.width)
