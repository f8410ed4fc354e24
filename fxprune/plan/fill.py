"""Filling a plan up to a budget: give removed channels back, block by block, while the cost stays within it.

A bisection over one global ratio (:func:`fxprune.plan.bisect_ratio`) lands well below a FLOPs or
parameter target when widths are aligned: a small step of the ratio makes every 16- or 32-channel layer
drop a whole block at once. :func:`fill_up` starts from such a plan and gives channels back in blocks of
:func:`fxprune.plan.chunk_size` atoms per group (so widths stay multiples of ``round_to``), the most
important block first, accepting a block only when the plan's counted cost stays at or below the target.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Collection

import numpy as np

from ..groups.grouping import Group
from .planner import Plan, plan_from_counts
from .rules import chunk_size, normalized_scores
from .segments import Segments

__all__ = ["fill_up"]

_WHOLE = -1  # unit index of a group planned as one segment


def _smaller_removal(
    group: Group, scores: np.ndarray, removed: np.ndarray, round_to: int, min_width: int
) -> np.ndarray | None:
    """The removal of a one-segment ``group`` with the next block given back (lowest scores still
    removed), or None when nothing is removed any more."""
    q = chunk_size(group, round_to)
    n = group.width - ((group.width - len(removed)) // q + 1) * q  # kept width: the next multiple of q
    while n > 0:
        fewer = plan_from_counts([group], {group.id: scores}, {group.id: n}, round_to, min_width)
        out = fewer.remove.get(group.id, np.zeros(0, dtype=np.int64))
        if len(out) < len(removed):
            return out
        n -= q
    return np.zeros(0, dtype=np.int64) if len(removed) else None


class _Filling:
    """The plan being filled: removals per group, and per-unit counts for groups of several segments."""

    def __init__(
        self, groups: list[Group], scores: dict[int, np.ndarray], plan: Plan, round_to: int, min_width: int
    ) -> None:
        self.by_id, self.scores = {g.id: g for g in groups}, scores
        self.round_to, self.min_width = round_to, min_width
        self.remove = {gid: np.asarray(r, dtype=np.int64) for gid, r in plan.remove.items()}
        self.segments: dict[int, Segments] = {}
        self.counts: dict[int, list[int]] = {}
        for gid in self.remove:
            seg = Segments.of(self.by_id[gid], scores[gid]) if gid in self.by_id else None
            if seg is not None:
                self.segments[gid], self.counts[gid] = seg, seg.counts_of(self.remove[gid])

    def offers(self, gid: int) -> list[tuple[float, int, int, object]]:
        """(importance, group id, unit, change) of the next block of every unit of group ``gid``."""
        g, removed = self.by_id.get(gid), self.remove.get(gid)
        if g is None or removed is None or len(removed) == 0:
            return []
        norm = normalized_scores(self.scores[gid])
        seg = self.segments.get(gid)
        if seg is None:
            fewer = _smaller_removal(g, self.scores[gid], removed, self.round_to, self.min_width)
            if fewer is None:
                return []
            back = np.setdiff1d(removed, fewer)
            return [(float(norm[back].mean()) if len(back) else 0.0, gid, _WHOLE, fewer)]
        out, q = [], seg.chunk(self.round_to)
        for u, n in enumerate(self.counts[gid]):
            if n > 0:
                length = seg.lengths[u]
                fewer = max(0, length - ((length - n) // q + 1) * q)
                back = np.concatenate([s[fewer:n] for s in seg.units[u]])
                out.append((float(norm[back].mean()), gid, u, fewer))
        return out

    def changed(self, gid: int, unit: int, change: object) -> dict[int, np.ndarray]:
        """The removals with one offer applied (the filling itself is left alone)."""
        trial = dict(self.remove)
        if unit == _WHOLE:
            trial[gid] = change
        else:
            counts = list(self.counts[gid])
            counts[unit] = int(change)
            trial[gid] = self.segments[gid].removal(counts)
        return trial

    def accept(self, gid: int, unit: int, change: object, trial: dict[int, np.ndarray]) -> None:
        self.remove = trial
        if unit != _WHOLE:
            self.counts[gid][unit] = int(change)


def fill_up(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    plan: Plan,
    fraction_of: Callable[[Plan], float],
    target: float,
    *,
    round_to: int = 1,
    min_width: int = 1,
    skip: Collection[int] = (),
    max_trials: int | None = None,
) -> Plan:
    """``plan`` with removed atoms given back while ``fraction_of(plan) <= target``.

    Every group in ``plan`` (except the ids in ``skip``, e.g. groups with their own ratio) offers its next
    block: one :func:`fxprune.plan.chunk_size` of atoms fewer removed (for a group holding several layers,
    see :class:`fxprune.plan.segments.Segments`, one block per segment unit). Blocks are tried most
    important first (mean of the group's normalised scores over the atoms given back); a block that would
    exceed the target ends that group's (unit's) filling: later blocks cost more as neighbours widen.
    ``max_trials`` bounds the number of cost evaluations (None: no bound). The returned plan's cost is at
    most ``target`` whenever ``plan``'s is.
    """
    state = _Filling(groups, scores, plan, round_to, min_width)
    heap: list[tuple[float, int, int, int]] = []
    changes: dict[tuple[int, int], object] = {}

    def offer(gid: int) -> None:
        if gid in skip:
            return
        for value, g, unit, change in state.offers(gid):
            changes[(g, unit)] = change
            heapq.heappush(heap, (-value, g, unit, len(changes)))

    for gid in sorted(state.remove):
        offer(gid)
    trials = 0
    while heap and (max_trials is None or trials < max_trials):
        _, gid, unit, _ = heapq.heappop(heap)
        change = changes.pop((gid, unit))
        trial = state.changed(gid, unit, change)
        trials += 1
        if fraction_of(Plan({k: v for k, v in trial.items() if len(v)})) <= target:
            state.accept(gid, unit, change, trial)
            for value, g, u, c in state.offers(gid):
                if u == unit:
                    changes[(g, u)] = c
                    heapq.heappush(heap, (-value, g, u, len(changes) + trials))
    return Plan({gid: r for gid, r in state.remove.items() if len(r)})
