"""Apply :class:`fxprune.groups.sdpa_scale.ScaleFold`: sdpa's default scale kept across a pruned head size."""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
from torch import nn

from ..groups.channel_constants import ChannelConstant
from ..groups.grouping import Group
from ..groups.sdpa_scale import ScaleFold, scale_factor
from ..plan.planner import Plan

__all__ = ["fold_scales"]


def _removed(groups: list[Group], plan: Plan, cut: Collection[int] | None) -> tuple[np.ndarray, np.ndarray]:
    """The classes removed by earlier slimming steps and those this step removes."""
    before, now = [], []
    for g in groups:
        removed = plan.remove.get(g.id)
        if removed is None or len(removed) == 0:
            continue
        (now if cut is None or g.id in cut else before).append(g.atoms[removed])
    join = lambda parts: np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)  # noqa: E731
    return join(before), join(now)


def _tensor(model: nn.Module, name: str) -> torch.Tensor:
    owner, _, attr = name.rpartition(".")
    return getattr(model.get_submodule(owner), attr)


def fold_scales(
    model: nn.Module,
    groups: list[Group],
    plan: Plan,
    constants: Sequence[ChannelConstant],
    cut: Collection[int] | None = None,
) -> None:
    """Scale the query rows of every :class:`ScaleFold` whose head size this step shrinks (in place,
    before the rows are sliced). ``cut`` as in :func:`fxprune.slim.slim_model`: a step slims only those
    groups, the others having been slimmed before (their rows are renumbered)."""
    folds = [c for c in constants if isinstance(c, ScaleFold)]
    if not folds:
        return
    gone_before, gone_now = _removed(groups, plan, cut)
    for f in folds:
        before = f.size - int(np.isin(f.roots, gone_before).sum())
        after = before - int(np.isin(f.roots, gone_now).sum())
        if after == before or after <= 0:
            continue
        factor = scale_factor(before, after)
        for name, dim, row_roots, rows in f.targets:
            alive = ~np.isin(row_roots, gone_before)
            current = (np.cumsum(alive) - 1)[rows[alive[rows]]]
            t = _tensor(model, name)
            index = [slice(None)] * t.dim()
            index[dim] = torch.as_tensor(current, device=t.device)
            with torch.no_grad():
                t[tuple(index)] *= factor
