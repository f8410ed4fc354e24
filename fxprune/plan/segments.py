"""A group's atoms split by the layers they belong to, so that every layer's width can be aligned.

A group can hold the channels of several layers that are not tied channel by channel: the inputs of a
concatenation feeding one consumer (YOLO's neck: ``cat([upsampled P5, P4])`` read by one convolution), or
the halves of a split (``chunk``). Aligning the group's total kept count then leaves each layer at an
arbitrary width, and ranking all atoms together can leave one layer with a single channel. A
:class:`Segments` view splits the atoms into *segments* (atoms that belong to exactly the same layers)
and groups the segments into *units* that change together (the pieces of an ``equal_parts`` constraint
form one unit; every other segment is a unit of its own). Each segment then loses the same fraction
as the ratio asks, its lowest-scored atoms first, with its kept count a multiple of the chunk size.
"""

from __future__ import annotations

import math

import numpy as np

from ..groups.grouping import Group

__all__ = ["Segments"]


def _partition(group: Group) -> list[np.ndarray]:
    """The atoms of ``group`` split by the set of (non-passive) blocks that contain them, in atom order."""
    columns = []
    for b in group.blocks:
        if b.passive or b.base not in group.block_atom_index:
            continue
        idx = group.block_atom_index[b.base]
        column = np.zeros(group.width, dtype=bool)
        column[idx[idx >= 0]] = True
        columns.append(column)
    if all(c.all() or not c.any() for c in columns):  # every atom in the same blocks: one segment
        return [np.arange(group.width, dtype=np.int64)]
    signature = np.packbits(np.stack(columns, axis=1), axis=1)  # one row of bits per atom
    _, first, which = np.unique(signature, axis=0, return_index=True, return_inverse=True)
    which = which.reshape(-1)
    atoms = np.argsort(which, kind="stable")  # atoms part by part, ascending within each
    pieces = np.split(atoms, np.cumsum(np.bincount(which, minlength=len(first)))[:-1])
    return [pieces[k].astype(np.int64) for k in np.argsort(first)]  # parts in order of their first atom


class Segments:
    """``group``'s atoms as units of segments; :meth:`of` returns None where the group is one segment or
    has its own chooser (then the whole-group rules of :mod:`fxprune.plan.planner` apply).

    ``units[u]`` lists segment atom arrays (each in removal order: prunable atoms, lowest score first);
    ``lengths[u]`` is the atom count of each segment of the unit (equal within a unit).
    """

    def __init__(self, group: Group, scores: np.ndarray, units: list[list[np.ndarray]]) -> None:
        self.group, self.scores = group, np.asarray(scores, dtype=np.float64)
        self.lengths = [len(u[0]) for u in units]
        frozen = np.zeros(group.width, dtype=bool)
        frozen[np.fromiter(group.frozen, dtype=np.int64, count=len(group.frozen))] = True
        self.units = [
            [seg[np.argsort(self.scores[seg], kind="stable")] for seg in (s[~frozen[s]] for s in unit)]
            for unit in units
        ]

    @classmethod
    def of(cls, group: Group, scores: np.ndarray) -> Segments | None:
        if group.chooser is not None:
            return None
        segments = _partition(group)
        if len(segments) < 2:
            return None
        key = {tuple(s.tolist()): s for s in segments}
        units: list[list[np.ndarray]] = []
        used: set[tuple[int, ...]] = set()
        for pieces in group.equal_parts:
            keys = [tuple(np.sort(p).tolist()) for p in pieces]
            if any(k not in key for k in keys) or len({len(k) for k in keys}) != 1:
                return None  # pieces that are not whole segments: the whole-group rules handle them
            units.append([key[k] for k in keys])
            used.update(keys)
        units += [[s] for k, s in key.items() if k not in used]
        return cls(group, scores, units)

    def chunk(self, round_to: int) -> int:
        """Atoms a segment loses at a time so that its layers' widths stay multiples of ``round_to``."""
        return 1 if round_to <= 1 else max(1, round_to // math.gcd(round_to, self.group.divisor))

    def removable(self, u: int) -> int:
        """Atoms every segment of unit ``u`` can lose (its fewest prunable atoms)."""
        return min(len(seg) for seg in self.units[u])

    def aligned(self, u: int, n_remove: int, q: int, min_width: int) -> int:
        """Atoms each segment of unit ``u`` loses when ``n_remove`` are asked: the kept count rounded up
        to a multiple of ``q`` (or the segment's whole length), at least ``min_width`` and one."""
        length = self.lengths[u]
        keep = max(min_width, length - min(n_remove, self.removable(u)), 1)
        keep = min(length, int(math.ceil(keep / q) * q))
        return max(0, min(length - keep, self.removable(u)))

    def counts_for_ratio(self, ratio: float, round_to: int, min_width: int) -> list[int]:
        """Per unit, the atoms each of its segments loses at ``ratio``."""
        q = self.chunk(round_to)
        return [
            self.aligned(u, int(math.floor(ratio * self.removable(u) + 1e-9)), q, min_width)
            for u in range(len(self.units))
        ]

    def removal_at(self, ratio: float, round_to: int, min_width: int) -> np.ndarray:
        """The atoms removed at ``ratio`` (see :meth:`counts_for_ratio`)."""
        return self.removal(self.counts_for_ratio(ratio, round_to, min_width))

    def removal(self, counts: list[int]) -> np.ndarray:
        """The atoms removed when every segment of unit ``u`` loses ``counts[u]`` (lowest scores first)."""
        parts = [seg[:n] for unit, n in zip(self.units, counts) for seg in unit if n > 0]
        return np.sort(np.concatenate(parts)).astype(np.int64) if parts else np.zeros(0, dtype=np.int64)

    def counts_of(self, removed: np.ndarray) -> list[int]:
        """Per unit, the atoms removed from its first segment in ``removed``."""
        gone = np.zeros(self.group.width, dtype=bool)
        gone[np.asarray(removed, dtype=np.int64)] = True
        return [int(gone[unit[0]].sum()) for unit in self.units]
