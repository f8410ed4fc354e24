"""Channel slots: one per channel of a parameter dimension, merged by a union-find as coupling is found."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Block", "SlotTable"]


@dataclass
class Block:
    """A run of slots standing for the channels ``0..size-1`` of some parameter dimensions.

    ``members`` holds ``(parameter or buffer name, dim)`` pairs that are always sliced together (a conv's
    weight rows and bias, a BN's weight, bias and running statistics). ``module`` owns them.
    """

    module: str
    members: tuple[tuple[str, int], ...]
    base: int
    size: int
    passive: bool = False  # created for a parameter read by get_attr, not by a layer

    @property
    def slots(self) -> np.ndarray:
        return np.arange(self.base, self.base + self.size)


class SlotTable:
    """A union-find over channel slots, with per-class flags.

    A class of slots that ends up frozen can never be removed (an op we do not understand touched it,
    it reaches a model output, ...); one marked approximate touches a channel-mixing layer (LayerNorm,
    GroupNorm) so removing it changes the remaining channels' values slightly.

    The parent links live in a numpy array and whole arrays of slots are coupled at once. The root of a
    class is always its smallest slot, so ``roots`` does not depend on the order of the unions.
    """

    def __init__(self) -> None:
        self._parent = np.zeros(1024, dtype=np.int64)
        self._stamp = np.zeros(1024, dtype=np.int64)  # scratch for the disjointness test of _merge
        self._size = 0
        self.frozen: dict[int, str] = {}
        self.approx: dict[int, str] = {}
        self.blocks: list[Block] = []
        self._block_by_key: dict[tuple, Block] = {}
        self._slots_of: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return self._size

    @property
    def parent(self) -> np.ndarray:
        """The parent link of every slot (a view: follow it to the root, or use ``roots``)."""
        return self._parent[: self._size]

    def new(self, n: int) -> np.ndarray:
        """Fresh, unrelated slots."""
        base = self._size
        if base + n > len(self._parent):
            grown = np.zeros(max(2 * len(self._parent), base + n), dtype=np.int64)
            grown[:base] = self._parent[:base]
            self._parent = grown
            self._stamp = np.zeros(len(grown), dtype=np.int64)
        self._parent[base : base + n] = np.arange(base, base + n)
        self._size = base + n
        return np.arange(base, base + n)

    def block(
        self, module: str, members: tuple[tuple[str, int], ...], size: int, passive: bool = False
    ) -> np.ndarray:
        """The slots of parameter dimensions, created on first use (a layer called twice reuses them).

        A parameter dimension already covered by another block is coupled to it.
        """
        key = tuple(members)
        blk = self._block_by_key.get(key)
        if blk is None:
            blk = Block(module, key, self._size, size, passive)
            self.new(size)
            self.blocks.append(blk)
            self._block_by_key[key] = blk
            for member in key:
                seen = self._slots_of.get(member)
                if seen is None:
                    self._slots_of[member] = blk.slots
                elif len(seen) == size:
                    self.union(seen, blk.slots)
                else:
                    raise ValueError(f"{member}: size {size} differs from {len(seen)}")
        elif blk.size != size:
            raise ValueError(f"{members}: size {size} differs from {blk.size}")
        elif blk.passive and not passive:
            blk.passive = False
            blk.module = module
        return blk.slots

    def slots_of(self, member: tuple[str, int]) -> np.ndarray | None:
        """The slots of a parameter dimension ``(name, dim)``, None when no layer created them."""
        return self._slots_of.get(member)

    def mark_passive(self, slots: np.ndarray) -> bool:
        """Mark the layer block whose slots are exactly ``slots`` (in order) passive: its width counts
        something else's units (a bias MLP's one row per head), so it neither makes atoms nor takes part in
        the ``round_to`` alignment. False when no block matches."""
        slots = np.asarray(slots)
        if len(slots) < 2 or np.any(np.diff(slots) != 1):
            return False
        for b in self.blocks:
            if b.base == slots[0] and b.size == len(slots):
                b.passive = True
                return True
        return False

    def find(self, x: int) -> int:
        return int(self._find_many(np.asarray([x], dtype=np.int64))[0])

    def _find_many(self, slots: np.ndarray) -> np.ndarray:
        """Roots of a 1-D array of slots, compressing their paths."""
        parent = self._parent
        roots = parent[slots]
        while True:
            up = parent[roots]
            if (up == roots).all():  # np.array_equal, without its checks (same shape by construction)
                break
            roots = up
        parent[slots] = roots
        return roots

    def roots(self, slots: np.ndarray) -> np.ndarray:
        """The class representative of each slot."""
        slots = np.asarray(slots, dtype=np.int64)
        return self._find_many(slots.ravel()).reshape(slots.shape)

    def all_roots(self) -> np.ndarray:
        """The class representative of every slot ``0..len-1``."""
        return self._find_many(np.arange(self._size, dtype=np.int64))

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self._parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.approx:
            self.approx.setdefault(ra, self.approx.pop(rb))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple slots elementwise (``a`` and ``b`` broadcast against each other)."""
        a, b = np.asarray(a, dtype=np.int64), np.asarray(b, dtype=np.int64)
        if a.shape != b.shape:
            a, b = np.broadcast_arrays(a, b)
        if a.size == 0:
            return
        ra, rb = self._find_many(a.ravel()), self._find_many(b.ravel())
        differ = ra != rb
        if differ.any():
            self._merge(ra[differ], rb[differ])

    def _merge(self, ra: np.ndarray, rb: np.ndarray) -> None:
        """Join the classes of roots ``ra[i]`` and ``rb[i]``; each new class keeps its smallest root."""
        if self._onto_fresh(ra, rb) or self._onto_fresh(rb, ra):
            return
        if self._disjoint(ra, rb):
            self._merge_pairs(ra, rb)
            return
        nodes, index = np.unique(np.concatenate([ra, rb]), return_inverse=True)
        u, v = index[: len(ra)], index[len(ra) :]
        if len(nodes) == 2 * len(ra):  # disjoint pairs (a layer meeting fresh channels): one step
            label = np.arange(len(nodes))
            label[np.maximum(u, v)] = np.minimum(u, v)
        else:
            label = _component_minima(len(nodes), u, v)
        flagged = [(flags, _in_keys(nodes, flags)) for flags in (self.frozen, self.approx) if flags]
        if any(len(np.unique(label[hit])) != np.count_nonzero(hit) for _, hit in flagged):
            # a new class joins two flagged classes: the order of the unions picks the reason kept
            for x, y in zip(ra.tolist(), rb.tolist()):
                self._union(x, y)
            return
        top = nodes[label]
        self._parent[nodes] = top
        for flags, hit in flagged:
            moved = np.nonzero((nodes != top) & hit)[0]
            for r, t in zip(nodes[moved].tolist(), top[moved].tolist()):
                flags[t] = flags.pop(r)

    def _onto_fresh(self, old: np.ndarray, fresh: np.ndarray) -> bool:
        """``_merge`` where ``fresh`` are consecutive unflagged roots all above ``old`` (a layer's new slots
        meeting the channels of its input): each joins its ``old`` root in one assignment. False (nothing
        done) when they are not."""
        lo, hi = int(fresh[0]), int(fresh[-1])
        if hi - lo != len(fresh) - 1 or lo <= int(old.max()):
            return False
        if len(fresh) > 1 and not bool((fresh[1:] - fresh[:-1] == 1).all()):
            return False
        if any(lo <= k <= hi for flags in (self.frozen, self.approx) for k in flags):
            return False
        self._parent[fresh] = old
        return True

    def _disjoint(self, ra: np.ndarray, rb: np.ndarray) -> bool:
        """Whether the roots of ``ra`` and ``rb`` are all different (without sorting: each root is stamped
        with its position; a repeated root keeps only its last stamp)."""
        n = len(ra)
        stamp, at = self._stamp, np.arange(2 * n)
        stamp[ra] = at[:n]
        stamp[rb] = at[n:]
        return bool(np.array_equal(stamp[ra], at[:n]) and np.array_equal(stamp[rb], at[n:]))

    def _merge_pairs(self, ra: np.ndarray, rb: np.ndarray) -> None:
        """``_merge`` for pairs of distinct classes (a layer meeting fresh channels): one step."""
        low, high = np.minimum(ra, rb), np.maximum(ra, rb)
        flagged = [(flags, _in_keys(high, flags)) for flags in (self.frozen, self.approx) if flags]
        if any((hit & _in_keys(low, flags)).any() for flags, hit in flagged):
            for x, y in zip(ra.tolist(), rb.tolist()):  # two flagged classes: the union order picks
                self._union(x, y)
            return
        self._parent[high] = low
        for flags, hit in flagged:
            for r, t in zip(high[hit].tolist(), low[hit].tolist()):
                flags[t] = flags.pop(r)

    def union_all(self, slots: np.ndarray) -> None:
        """Couple every slot of ``slots`` into one class."""
        flat = np.asarray(slots, dtype=np.int64).ravel()
        if flat.size > 1:
            self.union(flat[:1], flat[1:])

    def freeze_new(self, n: int, reason: str) -> np.ndarray:
        """Fresh slots that can never be removed (padding, outputs of ops we do not understand)."""
        slots = self.new(n)
        self.freeze(slots, reason)
        return slots

    def freeze(self, slots: np.ndarray, reason: str) -> None:
        for r in dict.fromkeys(self.roots(slots).ravel().tolist()):
            self.frozen.setdefault(r, reason)

    def mark_approx(self, slots: np.ndarray, reason: str) -> None:
        for r in dict.fromkeys(self.roots(slots).ravel().tolist()):
            self.approx.setdefault(r, reason)


def _in_keys(values: np.ndarray, flags: dict[int, str]) -> np.ndarray:
    """For every value: whether it is a key of ``flags`` (looping over the shorter of the two)."""
    if len(flags) <= 8:  # a few flagged classes (the usual case): one broadcast comparison
        keys = np.fromiter(flags.keys(), dtype=np.int64, count=len(flags))
        return (values[:, None] == keys[None, :]).any(axis=1)
    if len(flags) < len(values):
        return np.isin(values, np.fromiter(flags.keys(), dtype=np.int64, count=len(flags)))
    return np.fromiter((v in flags for v in values.tolist()), dtype=bool, count=len(values))


def _component_minima(n: int, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """For nodes ``0..n-1`` joined by edges ``u[i]-v[i]``: the smallest node of each node's component."""
    label = np.arange(n)
    while True:
        low = np.minimum(label[u], label[v])
        new = label.copy()
        np.minimum.at(new, u, low)
        np.minimum.at(new, v, low)
        while True:
            jumped = new[new]
            if np.array_equal(jumped, new):
                break
            new = jumped
        if np.array_equal(new, label):
            return label
        label = new
