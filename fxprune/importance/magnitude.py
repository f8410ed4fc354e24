"""Magnitude criteria: L1/L2 norm of every slice of an atom, over the whole group (Li et al. 2017)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .registry import register_importance


def _parameter(model: nn.Module, name: str) -> torch.Tensor | None:
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None  # a buffer (BN running statistics): not a weight


def magnitude_scores(model: nn.Module, group, p: int = 2) -> np.ndarray:
    """Per atom, the p-norm over all the group's parameter slices (buffers such as BN statistics excluded)."""
    scores = np.zeros(group.width, dtype=np.float64)
    for b in group.blocks:
        idx = group.block_atom_index[b.base]
        for name, dim in b.members:
            t = _parameter(model, name)
            if t is None:
                continue
            with torch.no_grad():
                t = t.detach().float()
                dims = [d for d in range(t.dim()) if d != dim]
                per = t.abs().pow(p)
                per = (per.sum(dims) if dims else per).double().numpy()
            ok = idx >= 0
            np.add.at(scores, idx[ok], per[ok])
    return scores ** (1.0 / p)


@register_importance("l1")
def l1(model: nn.Module, group) -> np.ndarray:
    return magnitude_scores(model, group, 1)


@register_importance("l2")
def l2(model: nn.Module, group) -> np.ndarray:
    return magnitude_scores(model, group, 2)


@register_importance("random")
def random(model: nn.Module, group) -> np.ndarray:
    return np.random.default_rng(group.id).random(group.width)
