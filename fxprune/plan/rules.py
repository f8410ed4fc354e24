"""Per-group removal rules shared by every planner: removal order, chunk size and how many atoms may go.

The ratio planner (:func:`fxprune.plan.make_plan`), the count planner (:func:`fxprune.plan.plan_from_counts`)
and the latency-budget planner of ``fxprune.deploy`` all use these functions, so an estimate built on them
describes the plan that is actually made.
"""

from __future__ import annotations

import math

import numpy as np

from ..groups.grouping import Group

__all__ = [
    "chunk_size",
    "keep_count",
    "max_removable",
    "normalized_scores",
    "prunable_atoms",
    "removal_costs",
    "removal_order",
    "removal_rank",
]


def prunable_atoms(group: Group) -> np.ndarray:
    """Indices of the atoms of ``group`` that may be removed (not frozen), ascending."""
    free = np.ones(group.width, dtype=bool)
    if group.frozen:
        free[np.fromiter(group.frozen, dtype=np.int64, count=len(group.frozen))] = False
    return np.nonzero(free)[0].astype(np.int64)


def removal_order(group: Group, scores: np.ndarray) -> np.ndarray:
    """The prunable atoms of ``group`` in the order they are removed: lowest score first, ties by index.

    Frozen atoms never appear. (Groups with equal-part constraints take this order within each part.)
    """
    free = prunable_atoms(group)
    return free[np.argsort(np.asarray(scores)[free], kind="stable")]


def removal_rank(group: Group, scores: np.ndarray) -> np.ndarray:
    """Position of every atom in :func:`removal_order` (``n`` atoms removed = the atoms of rank < ``n``).

    Frozen atoms get the largest int64 value: they are never removed.
    """
    rank = np.full(group.width, np.iinfo(np.int64).max, dtype=np.int64)
    order = removal_order(group, scores)
    rank[order] = np.arange(len(order))
    return rank


def chunk_size(group: Group, round_to: int) -> int:
    """Atoms removed at a time so that every layer width of ``group`` stays a multiple of ``round_to``.

    An atom may stand for several channels (``group.divisor``), so fewer atoms than ``round_to`` can
    make a chunk: ``round_to // gcd(round_to, divisor)``. Where pieces of the group must lose the same
    count (``group.equal_parts``, e.g. the halves of a split), a chunk takes that many atoms from every
    piece, so each piece's width stays aligned too.
    """
    if round_to <= 1:
        return 1
    q = max(1, round_to // math.gcd(round_to, group.divisor))
    return q * math.lcm(*(len(pieces) for pieces in group.equal_parts)) if group.equal_parts else q


def keep_count(group: Group, n_remove: int, round_to: int = 1, min_width: int = 1) -> int:
    """Atoms ``group`` keeps when ``n_remove`` prunable atoms are asked for.

    At least ``min_width`` atoms, the frozen ones and one atom stay; the kept count is rounded up to a
    multiple of :func:`chunk_size` (never above the group's width).
    """
    width = group.width
    keep = max(min_width, width - min(n_remove, group.prunable), 1)
    if round_to > 1:
        q = chunk_size(group, round_to)
        keep = min(width, int(math.ceil(keep / q) * q))
    return max(keep, len(group.frozen), 1)


def max_removable(group: Group, round_to: int = 1, min_width: int = 1) -> int:
    """The most atoms a plan can remove from ``group`` (see :func:`keep_count`); 0 if none can go."""
    return max(0, min(group.prunable, group.width - keep_count(group, group.prunable, round_to, min_width)))


def normalized_scores(scores: np.ndarray) -> np.ndarray:
    """Scores divided by their mean, so that groups of different scales can be compared."""
    s = np.asarray(scores, dtype=np.float64)
    return s / (s.mean() + 1e-12)


def removal_costs(group: Group, scores: np.ndarray) -> np.ndarray:
    """Normalised importance of the prunable atoms, ascending: removing ``n`` atoms costs the first ``n``."""
    return np.sort(normalized_scores(scores)[prunable_atoms(group)])
