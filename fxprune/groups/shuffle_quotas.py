"""How many channels each layer feeding a followed channel shuffle keeps, and where.

The slim model cuts tensors by count (a shuffle's rows, ``chunk``) where the original cuts them by
position, and after a shuffle it lists the kept channels interleaved by rank (:mod:`.permutation`). A
count cut lands where the position cut does only if each layer feeding the shuffled tensors keeps given
numbers of channels in given leading ranges of its channels. In ShuffleNetV2 each branch output keeps
``k/2`` of its ``k`` kept channels in its first half, about ``k/4`` in its first quarter, and so on for as
many units as its channels travel through the stage; every feeding layer keeps the same ``k`` (the rows
of each shuffle must be equal).

:func:`shuffle_choosers` derives these requirements from the graph, as "among these channels, keep
``f(k)``", and gives the group that holds them a chooser (``Group.chooser``) that keeps, within each
range, the most important channels. A shuffle whose requirements cannot be derived here has its
channels frozen instead.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch.fx as fx

from .context import op_name
from .permutation import PERMUTATION, Shuffle, flow_step

__all__ = ["QuotaChooser", "Requirement", "choose_with_quotas", "equal_channel_quotas", "shuffle_choosers"]

Count = Callable[[int], int]  # kept channels as a function of k, the channels kept per reference width


@dataclass
class Requirement:
    """Keep exactly ``count(k)`` of the channels ``labels`` (slots of a leading range of a tensor)."""

    labels: np.ndarray
    count: Count


class _Unsupported(Exception):
    pass


class _Region:
    """The tensors fed by one or more connected shuffles, up to the layers that consume them."""

    def __init__(self, result, start: Shuffle, shuffles: dict[fx.Node, Shuffle]):
        self.labels, self.shuffles, self.d = result.labels, shuffles, start.dim
        self.gm = start.merge.graph.owning_module
        self.dims: dict[fx.Node, tuple[int, int]] = {}
        self.members: list[Shuffle] = []
        self.splits: list[fx.Node] = []
        self._collect(start)
        self.entries = self._entries()
        rows = [self._width(s.source) // s.g for s in self.members]
        pieces = [self._width(u, i) for u in self.splits for i in range(len(self.labels[u]))]
        self.ref = math.gcd(*[self._width(e) for e in self.entries], *rows, *pieces)

    def _collect(self, start: Shuffle) -> None:
        todo = [start]
        while todo:
            s = todo.pop()
            if s.merge in self.dims:
                continue
            self.members.append(s)
            self.dims[s.merge] = (s.dim, s.ndim)
            nodes = [s.merge]
            while nodes:
                node = nodes.pop()
                for user in node.users:
                    kind, detail = flow_step(self.gm, user, s.dim, s.ndim)
                    if kind == "shuffle":
                        todo.append(self.shuffles.get(detail.merge, detail))
                    elif kind == "through" and user not in self.dims:
                        self.dims[user] = (s.dim, s.ndim)
                        self.splits += [user] if op_name(user) in ("chunk", "split") else []
                        nodes.append(user)
                    elif kind == "unknown":
                        raise _Unsupported(f"{user.name} is not followed")

    def _entries(self) -> list[fx.Node]:
        """Tensors with ascending order that flow into the region."""
        found = [s.source for s in self.members if s.source not in self.dims]
        for node in self.dims:
            if op_name(node) in ("cat", "concat", "concatenate"):
                found += [t for t in node.args[0] if t not in self.dims]
        return list(dict.fromkeys(found))

    def _width(self, node: fx.Node, piece: int | None = None) -> int:
        lab = self.labels.get(node)
        lab = lab[piece] if piece is not None else lab
        if not isinstance(lab, dict) or self.d not in lab:
            raise _Unsupported(f"no channel labels at {node.name}")
        return len(lab[self.d])

    def _scaled(self, width: int) -> Count:
        if width % self.ref:
            raise _Unsupported(f"a width of {width} is not a multiple of {self.ref}")
        units = width // self.ref
        return lambda k: units * k

    def requirements(self) -> list[Requirement]:
        """Every requirement of the region on its entries (raises ``_Unsupported``)."""
        found: list[Requirement] = []
        for e in self.entries:
            self._expand(e, self._width(e), self._scaled(self._width(e)), found)
        for s in self.members:
            n = self._width(s.source) // s.g
            for r in range(1, s.g):
                self._expand(s.source, r * n, self._scaled(r * n), found)
        for u in self.splits:
            offset = 0
            for i in range(len(self.labels[u]) - 1):
                offset += self._width(u, i)
                self._expand(u, offset, self._scaled(offset), found)
        return found

    def _expand(self, node: fx.Node, prefix: int, count: Count, found: list[Requirement]) -> None:
        """Turn "the first ``count(k)`` channels of ``node``'s slim order are its kept channels among the
        first ``prefix``" into requirements on the entries."""
        if prefix <= 0:
            return
        if node not in self.dims:
            found.append(Requirement(self.labels[node][self.d][:prefix], count))
            return
        name = op_name(node)
        shuffle = next((m for m in self.members if m.merge == node), None)
        if shuffle is not None:
            self._expand_rows(shuffle, prefix, count, found)
        elif name in ("cat", "concat", "concatenate"):
            offset = 0
            for t in node.args[0]:
                w = self._width(t)
                if prefix <= offset + w:
                    before = self._scaled(offset)
                    rest = lambda k, before=before: count(k) - before(k)  # noqa: E731
                    return self._expand(t, prefix - offset, rest, found)
                offset += w
        elif name == "getitem":
            src, i = node.args[0], node.args[1]
            offset = sum(self._width(src, j) for j in range(i))
            before = self._scaled(offset)
            self._expand(src, offset + prefix, lambda k: before(k) + count(k), found)
        else:
            self._expand(node.all_input_nodes[0], prefix, count, found)  # a per-channel op

    def _expand_rows(self, s: Shuffle, prefix: int, count: Count, found: list[Requirement]) -> None:
        """The output's first ``prefix`` channels are each row's first ``ceil((prefix - r) / g)``; the slim
        output's first ``count`` are each row's first ``ceil((count - r) / g)`` in slim order."""
        n = self._width(s.source) // s.g
        for r in range(s.g):
            row_prefix = min(max(math.ceil((prefix - r) / s.g), 0), n)
            before = self._scaled(r * n)

            def row_count(k: int, r: int = r, before: Count = before) -> int:
                return before(k) + max(math.ceil((count(k) - r) / s.g), 0)

            if row_prefix:
                self._expand(s.source, r * n + row_prefix, row_count, found)


def shuffle_choosers(result, where: dict) -> tuple[dict[int, QuotaChooser], set[int], list]:
    """Per group id, a :class:`QuotaChooser` keeping its followed shuffles consistent; the ids of the
    ``chunk`` label arrays those choosers take care of; and ``(group, atom index, reason)`` of atoms to
    freeze where the requirements could not be derived. ``where`` maps a slot root to its ``(group, atom
    index)``."""
    shuffles = {c[1].merge: c[1] for c in result.constraints if c[0] == PERMUTATION}
    choosers, handled, freeze, done = {}, set(), [], set()
    for merge, s in shuffles.items():
        if merge in done:
            continue
        region = None
        try:
            region = _Region(result, s, shuffles)
            done.update(m.merge for m in region.members)
            reqs = region.requirements()
            mapped = _map(result.table, where, reqs)
        except _Unsupported as e:
            nodes = region.dims if region is not None else {merge: (s.dim, s.ndim)}
            freeze += _region_atoms(result, where, nodes, f"channel shuffle at {merge.name}: {e}")
            continue
        group, atoms = mapped
        choosers[group.id] = QuotaChooser(group, atoms, [r.count for r in reqs], region.ref)
        handled.update(id(p) for u in region.splits for piece in result.labels[u] for p in piece.values())
    return choosers, handled, freeze


def _map(table, where: dict, reqs: list[Requirement]):
    """The one group all requirements fall in, and each requirement's atom indices there."""
    groups, atoms = {}, []
    for r in reqs:
        hits = [where.get(int(x)) for x in table.roots(r.labels).tolist()]
        if any(h is None for h in hits):
            raise _Unsupported("channels outside any group")
        groups.update((id(h[0]), h[0]) for h in hits)
        atoms.append(np.array([h[1] for h in hits], dtype=np.int64))
        if len(np.unique(atoms[-1])) != len(atoms[-1]):
            raise _Unsupported("two channels of one range are removed together")
    if len(groups) != 1:
        raise _Unsupported("its channels span several groups")
    return next(iter(groups.values())), atoms


def _region_atoms(result, where: dict, nodes, reason: str) -> list:
    out = []
    for node, (d, _) in nodes.items():
        labs = result.labels.get(node)
        for lab in labs if isinstance(labs, list) else [labs]:
            if isinstance(lab, dict) and d in lab:
                out += [(*where[r], reason) for r in result.table.roots(lab[d]).tolist() if r in where]
    return out


class QuotaChooser:
    """``Group.chooser`` keeping ``counts[i](k)`` of the atoms ``atoms[i]``: ``(scores, n_remove, round_to)
    -> atoms to remove``. With ``free``, the group's other atoms go by score for the rest of ``n_remove``."""

    def __init__(self, group, atoms: list[np.ndarray], counts: list[Count], ref: int, free: bool = False):
        self.group, self.atoms, self.counts, self.ref, self.free = group, atoms, counts, ref, free

    def absorb(self, equal_parts: list[list[np.ndarray]]) -> bool:
        """Take the group's ``chunk`` constraints as quotas (each piece keeps ``k`` per reference width);
        False when a piece's width is not a multiple of the reference width."""
        for pieces in equal_parts:
            if any(len(p) % self.ref for p in pieces):
                return False
            for p in pieces:
                units = len(p) // self.ref
                self.atoms.append(np.asarray(p, dtype=np.int64))
                self.counts.append(lambda k, units=units: units * k)
        return True

    def __call__(self, scores: np.ndarray, n_remove: int, round_to: int = 1) -> np.ndarray:
        quotas = (self.atoms, self.counts, self.ref, round_to)
        if not self.free:
            return choose_with_quotas(self.group, scores, n_remove, *quotas)
        covered = set(np.concatenate(self.atoms).tolist())
        share = round(n_remove * len(covered) / max(self.group.width, 1))
        removed = choose_with_quotas(self.group, scores, share, *quotas)
        others = [i for i in range(self.group.width) if i not in self.group.frozen and i not in covered]
        others = np.array(others, dtype=np.int64)
        extra = others[np.argsort(np.asarray(scores)[others], kind="stable")]
        # never all of them: they are whole tensors of their own (an attention's query/key channels),
        # and a zero-width tensor is refused by runtimes (OpenVINO cannot compile it)
        extra = extra[: max(len(extra) - max(round_to, 1), 0)]
        return np.sort(np.concatenate([removed, extra[: max(n_remove - len(removed), 0)]]))


def equal_channel_quotas(group, pieces: list[np.ndarray]) -> QuotaChooser | None:
    """A chooser for pieces that must keep equal channel counts although one atom stands for several
    channels in some of them (a residual half whose channels a head view ties in pairs, next to a half
    of single channels): each piece keeps atoms in proportion to its distinct atoms. None when a piece
    repeats its atoms unevenly, two pieces share an atom or the pieces differ in channels."""
    distinct = [np.unique(p, return_counts=True) for p in pieces]
    if len({len(p) for p in pieces}) != 1 or any(len(set(c.tolist())) != 1 for _, c in distinct):
        return None
    atoms = [a for a, _ in distinct]
    flat = np.concatenate(atoms)
    if len(np.unique(flat)) != len(flat):
        return None
    ref = math.gcd(*[len(a) for a in atoms])
    counts = [_times(len(a) // ref) for a in atoms]
    return QuotaChooser(group, atoms, counts, ref, free=True)


def _times(units: int) -> Count:
    return lambda k: units * k


def choose_with_quotas(
    group,
    scores: np.ndarray,
    n_remove: int,
    atoms: list[np.ndarray],
    counts: list[Count],
    ref: int,
    round_to: int = 1,
) -> np.ndarray:
    """The atoms to remove: about ``n_remove``, every requirement met, the most important kept in each
    range, ``k`` a multiple of ``round_to`` where one is near. Empty when no smaller width meets them
    (the group then keeps its width)."""
    every = np.unique(np.concatenate(atoms))
    target = max(ref - n_remove * ref // max(len(every), 1), 1)
    # the count each layer keeps per ``ref`` channels: the feasible one nearest the target (odd counts
    # deep in a chain of shuffles can contradict each other), a multiple of ``round_to`` less than
    # ``round_to`` away first, the larger one on a tie
    def rank(k: int) -> tuple:
        return (k % round_to != 0 or abs(k - target) >= round_to, abs(k - target), -k)

    for k in sorted(range(1, ref), key=rank):
        kept = _solve(group, scores, atoms, [c(k) for c in counts])
        if kept is not None:
            return np.sort(every[~np.isin(every, kept)])
    return np.zeros(0, dtype=np.int64)


def _solve(group, scores, atoms: list[np.ndarray], quotas: list[int]) -> np.ndarray | None:
    """Kept atoms meeting every quota of a laminar family of atom sets, best scores first; None if none."""
    masks = {}
    for a, q in zip(atoms, quotas):
        key = tuple(np.sort(a).tolist())
        if masks.get(key, q) != q or not 0 <= q <= len(a):
            return None
        masks[key] = q
    sets = sorted(((np.array(k), q) for k, q in masks.items()), key=lambda s: -len(s[0]))
    kept: list[int] = []
    for i, (a, q) in enumerate(sets):
        inner = [(b, p) for b, p in sets[i + 1 :] if np.isin(b, a).any()]
        if any(not np.isin(b, a).all() for b, _ in inner):
            return None  # overlapping ranges: not a laminar family
        children = [(b, p) for b, p in inner if not any(np.isin(b, c).all() for c, _ in inner if c is not b)]
        free = a[~np.isin(a, np.concatenate([b for b, _ in children]))] if children else a
        quota = q - sum(p for _, p in children)
        frozen = [x for x in free.tolist() if x in group.frozen]
        if quota < len(frozen) or quota > len(free):
            return None
        rest = np.array([x for x in free.tolist() if x not in group.frozen], dtype=np.int64)
        best = rest[np.argsort(-np.asarray(scores)[rest], kind="stable")][: quota - len(frozen)]
        kept += frozen + best.tolist()
    return np.array(sorted(set(kept)), dtype=np.int64)
