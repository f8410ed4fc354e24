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
    """

    def __init__(self) -> None:
        self.parent: list[int] = []
        self.frozen: dict[int, str] = {}
        self.approx: dict[int, str] = {}
        self.blocks: list[Block] = []
        self._block_by_key: dict[tuple, Block] = {}
        self._slots_of: dict[tuple[str, int], np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.parent)

    def new(self, n: int) -> np.ndarray:
        """Fresh, unrelated slots."""
        base = len(self.parent)
        self.parent.extend(range(base, base + n))
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
            blk = Block(module, key, len(self.parent), size, passive)
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

    def find(self, x: int) -> int:
        parent = self.parent
        root = x
        while parent[root] != root:
            root = parent[root]
        while parent[x] != root:
            parent[x], x = root, parent[x]
        return root

    def roots(self, slots: np.ndarray) -> np.ndarray:
        """The class representative of each slot."""
        find = self.find
        return np.fromiter((find(int(s)) for s in slots.ravel()), dtype=np.int64, count=slots.size).reshape(
            slots.shape
        )

    def _union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        if rb in self.frozen:
            self.frozen.setdefault(ra, self.frozen.pop(rb))
        if rb in self.approx:
            self.approx.setdefault(ra, self.approx.pop(rb))

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Couple slots elementwise (``a`` and ``b`` broadcast against each other)."""
        a, b = np.broadcast_arrays(np.asarray(a), np.asarray(b))
        for x, y in zip(a.ravel().tolist(), b.ravel().tolist()):
            if x != y:
                self._union(x, y)

    def union_all(self, slots: np.ndarray) -> None:
        """Couple every slot of ``slots`` into one class."""
        flat = np.asarray(slots).ravel().tolist()
        for y in flat[1:]:
            self._union(flat[0], y)

    def freeze_new(self, n: int, reason: str) -> np.ndarray:
        """Fresh slots that can never be removed (padding, outputs of ops we do not understand)."""
        slots = self.new(n)
        self.freeze(slots, reason)
        return slots

    def freeze(self, slots: np.ndarray, reason: str) -> None:
        for s in np.asarray(slots).ravel().tolist():
            r = self.find(s)
            self.frozen.setdefault(r, reason)

    def mark_approx(self, slots: np.ndarray, reason: str) -> None:
        for s in np.asarray(slots).ravel().tolist():
            r = self.find(s)
            self.approx.setdefault(r, reason)
