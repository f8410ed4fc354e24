"""Plan channel removal by ratio (per group or global), with round_to, minimum widths, chunk constraints."""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass, field

import numpy as np

from ..groups.grouping import Group
from .rules import keep_count, max_removable, normalized_scores, prunable_atoms, removal_order
from .segments import Segments

__all__ = ["Plan", "group_ratio", "make_plan", "own_ratio", "plan_from_counts"]


@dataclass
class Plan:
    """Atoms to remove, per group id."""

    remove: dict[int, np.ndarray] = field(default_factory=dict)

    def removed_count(self) -> int:
        return sum(len(v) for v in self.remove.values())


def own_ratio(group: Group, ratios: dict[str, float] | None) -> float | None:
    """The ratio of the first pattern of ``ratios`` matching one of ``group``'s modules, else None."""
    for pattern, r in (ratios or {}).items():
        if any(fnmatch.fnmatchcase(m, pattern) for m in group.modules):
            return r
    return None


def group_ratio(group: Group, ratio: float, ratios: dict[str, float] | None) -> float:
    """The ratio for ``group``: its own (:func:`own_ratio`) where a pattern matches, else ``ratio``."""
    r = own_ratio(group, ratios)
    return ratio if r is None else r


def _ratio_count(group: Group, ratio: float) -> int:
    """The ratio applies to the channels that can be removed: frozen ones are not counted."""
    return int(math.floor(ratio * group.prunable + 1e-9))


def _choose(group: Group, scores: np.ndarray, n_remove: int, round_to: int = 1) -> np.ndarray:
    """The ``n_remove`` lowest-scored prunable atoms, honouring equal-parts (chunk) constraints."""
    if n_remove <= 0:
        return np.zeros(0, dtype=np.int64)
    if group.chooser is not None:  # counts the group's layers must keep (after a channel shuffle)
        return np.sort(group.chooser(scores, n_remove, round_to))
    if not group.equal_parts:
        return np.sort(removal_order(group, scores)[:n_remove])
    prunable = prunable_atoms(group)
    pieces = group.equal_parts[0]
    in_pieces = set(np.concatenate(pieces).tolist())
    free = np.array([i for i in prunable if i not in in_pieces], dtype=np.int64)
    share = len(in_pieces) / max(len(prunable), 1)
    per_piece = int(n_remove * share) // len(pieces)
    cand = [np.array([i for i in p if i not in group.frozen], dtype=np.int64) for p in pieces]
    per_piece = min([per_piece] + [len(c) for c in cand])
    chosen = [c[np.argsort(scores[c], kind="stable")][:per_piece] for c in cand]
    rest = n_remove - per_piece * len(pieces)
    if len(free):
        chosen.append(free[np.argsort(scores[free], kind="stable")][: max(rest, 0)])
    return np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, dtype=np.int64)


def _keep_one_per_layer(group: Group, scores: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Never empty a layer: give back the best atom of any layer block that would lose all its channels."""
    removed = np.zeros(group.width, dtype=bool)
    removed[np.asarray(chosen, dtype=np.int64)] = True
    for b in group.blocks:
        if b.passive:
            continue
        idx = group.block_atom_index[b.base]
        idx = idx[idx >= 0]
        if len(idx) and removed[idx].all():
            removed[max(np.unique(idx).tolist(), key=lambda i: scores[i])] = False
    return np.nonzero(removed)[0].astype(np.int64)


def make_plan(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    ratio: float,
    ratios: dict[str, float] | None = None,
    round_to: int = 1,
    min_width: int = 1,
    global_ranking: bool = False,
    weights: dict[int, float] | None = None,
) -> Plan:
    """Choose atoms to remove in every group.

    Per group (default), each group loses ``ratio`` of its atoms (lowest scores first). With
    ``global_ranking``, scores are normalised by each group's mean (then multiplied by the group's entry in
    ``weights``, if any; see :func:`fxprune.targets.ranking_weights`) and the lowest ``ratio`` of all
    prunable atoms are removed, with each group's minimum width and ``round_to`` still honoured.
    """
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"ratio must be in [0, 1), got {ratio}")
    for p, r in (ratios or {}).items():
        if not 0.0 <= r < 1.0:
            raise ValueError(f"ratio for {p!r} must be in [0, 1), got {r}")
    plan = Plan()
    if global_ranking:
        pool = []
        for g in groups:
            norm = normalized_scores(scores[g.id]) * (weights or {}).get(g.id, 1.0)
            pool += [(norm[i], g.id, i) for i in range(g.width) if i not in g.frozen]
        pool.sort()
        budget = int(ratio * len(pool))
        quota = {g.id: 0 for g in groups}
        caps = {g.id: max_removable(g, 1, min_width) for g in groups}
        for _, gid, _ in pool:
            if budget <= 0:
                break
            if quota[gid] < caps[gid]:
                quota[gid] += 1
                budget -= 1
        by_id = {g.id: g for g in groups}
        for gid, n in quota.items():
            plan.remove[gid] = _removal_for_count(by_id[gid], scores[gid], n, round_to, min_width)
        return plan
    for g in groups:
        r = group_ratio(g, ratio, ratios)
        if r <= 0 or g.prunable == 0:
            continue
        segments = Segments.of(g, scores[g.id])
        if segments is not None:  # several layers in one group: each keeps its share, aligned
            chosen = segments.removal_at(r, round_to, min_width)
        else:
            keep = keep_count(g, _ratio_count(g, r), round_to, min_width)
            n = min(g.width - keep, g.prunable)
            chosen = _keep_one_per_layer(g, scores[g.id], _choose(g, scores[g.id], n, round_to))
        if len(chosen):
            plan.remove[g.id] = chosen
    return plan


def plan_from_counts(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    counts: dict[int, int],
    round_to: int = 1,
    min_width: int = 1,
) -> Plan:
    """A plan removing ``counts[group id]`` atoms (lowest scores first) from each group.

    Minimum width, ``round_to`` and chunk constraints are honoured as in :func:`make_plan`; a layer
    never loses all its channels.
    """
    plan = Plan()
    for g in groups:
        n = counts.get(g.id, 0)
        if n <= 0 or g.prunable == 0:
            continue
        chosen = _removal_for_count(g, scores[g.id], n, round_to, min_width)
        if len(chosen):
            plan.remove[g.id] = chosen
    return plan


def _removal_for_count(g: Group, scores: np.ndarray, n: int, round_to: int, min_width: int) -> np.ndarray:
    """The atoms ``g`` loses when ``n`` are asked for (a group of several layers: the same share each)."""
    segments = Segments.of(g, scores)
    if segments is not None:
        return segments.removal_at(n / max(g.prunable, 1), round_to, min_width)
    keep = keep_count(g, n, round_to, min_width)
    chosen = _choose(g, scores, min(g.width - keep, g.prunable), round_to)
    return _keep_one_per_layer(g, scores, chosen)
