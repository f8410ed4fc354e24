"""Channel groups: the sets of parameter slices that must be removed together, built from propagation."""

from __future__ import annotations

import fnmatch
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .context import Unsupported
from .grouped_conv import channels_per_slot, sets_alignment
from .propagate import PropagationResult
from .shuffle_quotas import equal_channel_quotas, shuffle_choosers
from .slots import Block, SlotTable

__all__ = ["AtomPlaces", "Group", "build_groups", "mark_table_layers"]


@dataclass
class Group:
    """Coupled channels of one or more layers.

    ``atoms[i]`` is a removable unit (a slot class); ``blocks`` are the parameter dimensions it spans;
    ``frozen`` maps atom index -> reason it must stay. ``equal_parts`` lists atom-index pieces that must
    lose the same number of atoms (``chunk``). ``divisor`` is how many channels of the narrowest layer an
    atom stands for (grouped convs, GroupNorm). ``chooser(scores, n_remove, round_to)``, when set, picks the
    atoms to remove itself (channels after a channel shuffle, :mod:`.shuffle_quotas`).
    """

    id: int
    atoms: np.ndarray
    blocks: list[Block]
    frozen: dict[int, str] = field(default_factory=dict)
    approx_reason: str | None = None
    equal_parts: list[list[np.ndarray]] = field(default_factory=list)
    divisor: int = 1
    chooser: Callable[[np.ndarray, int, int], np.ndarray] | None = field(default=None, repr=False)

    @property
    def width(self) -> int:
        return len(self.atoms)

    @property
    def prunable(self) -> int:
        return self.width - len(self.frozen)

    @property
    def exact(self) -> bool:
        return self.approx_reason is None

    @property
    def modules(self) -> list[str]:
        return list(dict.fromkeys(b.module for b in self.blocks if not b.passive))

    def members(self) -> list[str]:
        """``module.param[dim]`` of every slice, layer blocks first."""
        seen = {}
        for b in sorted(self.blocks, key=lambda b: b.passive):
            for p, d in b.members:
                seen.setdefault(f"{p}[{d}]", None)
        return list(seen)

    def freeze_modules(self, patterns: Iterable[str], reason: str) -> None:
        """Freeze every atom that touches a module matching one of ``patterns``."""
        pats = list(patterns)
        hit = {i for b, idx in self._block_atoms() for i in idx if matches_module(b.module, pats)}
        for i in hit:
            self.frozen.setdefault(i, reason)

    def _block_atoms(self):
        for b in self.blocks:
            yield b, np.unique(self.block_atom_index[b.base])

    block_atom_index: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


def matches_module(name: str, patterns: list[str]) -> bool:
    """``name`` matches a glob pattern, or lies inside a module a pattern names."""
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def _pointer_jump(parent: np.ndarray) -> np.ndarray:
    """Roots of a union-find forest given as a parent array, in a few vectorized steps."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt


def _components(n: int, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Connected components of nodes ``0..n-1`` joined by edges ``a[i]-b[i]`` (label = smallest node)."""
    label = np.arange(n)
    while True:
        la, lb = label[a], label[b]
        low = np.minimum(la, lb)
        new = label.copy()
        np.minimum.at(new, la, low)
        np.minimum.at(new, lb, low)
        new = _pointer_jump(new)
        if np.array_equal(new, label):
            return label
        label = new


def build_groups(result: PropagationResult, model: nn.Module) -> tuple[list[Group], list[Unsupported]]:
    """Turn the slot union-find into groups of atoms (vectorized: ResNet-152 has 200k slots)."""
    table = result.table
    mark_table_layers(result)
    roots = _pointer_jump(np.asarray(table.parent, dtype=np.int64))
    roots_of = {b.base: roots[b.base : b.base + b.size] for b in table.blocks}
    firsts, seq = _anchored_atoms(table, roots_of, len(roots))
    if not seq:
        return [], result.unsupported
    # atoms that share a parameter dimension belong to one group
    seq_all = np.concatenate(seq)
    ends = np.concatenate([np.full(len(r), r[0]) for r in seq])
    comp = _components(len(roots), ends, seq_all)
    by_group: dict[int, list[Block]] = {}
    for b in table.blocks:
        if b.base in firsts:
            by_group.setdefault(int(comp[firsts[b.base]]), []).append(b)
    atoms_of = _atoms_by_component(comp, seq_all)
    make = _GroupMaker(table, roots_of, len(roots), model, _distinct_roots(table.blocks, roots, len(roots)))
    ordered = sorted(by_group.items(), key=lambda kv: min(b.base for b in kv[1]))
    groups = [make(gid, atoms_of[g], blocks) for gid, (g, blocks) in enumerate(ordered)]
    _attach_constraints(result, groups, table)
    return groups, result.unsupported


def mark_table_layers(result: PropagationResult) -> None:
    """Mark passive the rows of every layer whose input comes from parameters and buffers alone.

    Such a layer computes a table that does not depend on the model's inputs (Swin V2-CR's
    continuous-position-bias MLP: one output row per head, from the buffer of relative coordinates): its
    rows follow the channels they are coupled with, but its width costs nothing per input, so it takes no
    part in the ``round_to`` alignment (the heads it stands for are aligned by the q/k/v layers instead).
    """
    nodes = list(result.labels)
    if not nodes:
        return
    fed: set = set()  # nodes computed from a model input
    for node in nodes[0].graph.nodes:
        if node.op == "placeholder" or any(a in fed for a in node.all_input_nodes):
            fed.add(node)
    for node in nodes:
        if node.op != "call_module" or node in fed or not node.all_input_nodes:
            continue
        lab = result.labels.get(node)
        for slots in lab.values() if isinstance(lab, dict) else ():
            result.table.mark_passive(slots)


def _anchored_atoms(table: SlotTable, roots_of: dict[int, np.ndarray], n: int):
    """Per block, the roots it spans that some layer block also spans (passive blocks alone make no atom).

    Returns ``(first root of each block with any, list of those root arrays in block order)``.
    """
    anchored = np.zeros(n, dtype=bool)
    for b in table.blocks:
        if not b.passive:
            anchored[roots_of[b.base]] = True
    firsts, seq = {}, []
    for b in table.blocks:
        r = roots_of[b.base]
        r = r[anchored[r]]
        if len(r):
            firsts[b.base] = r[0]
            seq.append(r)
    return firsts, seq


def _distinct_roots(blocks: list[Block], roots: np.ndarray, n: int) -> dict[int, int]:
    """The number of distinct roots each layer (non-passive) block spans, by block base, with one sort."""
    active = [b for b in blocks if not b.passive and b.size > 0]
    if not active:
        return {}
    sizes = np.fromiter((b.size for b in active), dtype=np.int64, count=len(active))
    spans = np.concatenate([roots[b.base : b.base + b.size] for b in active])
    keys = np.sort(np.repeat(np.arange(len(active), dtype=np.int64), sizes) * n + spans, kind="stable")
    first = np.ones(len(keys), dtype=bool)  # a sort, not np.unique: its hashing is slow on such keys
    first[1:] = keys[1:] != keys[:-1]
    counts = np.bincount(keys[first] // n, minlength=len(active))
    return {b.base: int(c) for b, c in zip(active, counts.tolist())}


def _atoms_by_component(comp: np.ndarray, seq_all: np.ndarray) -> dict[int, np.ndarray]:
    """The distinct atoms of each component, in order of first appearance in ``seq_all``."""
    uniq, first_at = np.unique(seq_all, return_index=True)
    ordered = uniq[np.argsort(first_at, kind="stable")]
    order = np.argsort(comp[ordered], kind="stable")
    cuts = np.nonzero(np.diff(comp[ordered][order]))[0] + 1
    return {int(comp[ordered[chunk[0]]]): ordered[chunk] for chunk in np.split(order, cuts)}


class _GroupMaker:
    """Builds each :class:`Group` from its atoms, with the frozen and approximate flags of the table."""

    def __init__(
        self,
        table: SlotTable,
        roots_of: dict[int, np.ndarray],
        n: int,
        model: nn.Module | None,
        distinct: dict[int, int],
    ):
        self.table, self.roots_of, self.model = table, roots_of, model
        self.distinct = distinct  # distinct roots per non-empty layer block (its distinct atoms: a layer
        # block's roots are all atoms of the block's group); an empty block has none
        self.is_frozen, self.is_approx = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        self.is_frozen[np.fromiter(table.frozen.keys(), dtype=np.int64, count=len(table.frozen))] = True
        self.is_approx[np.fromiter(table.approx.keys(), dtype=np.int64, count=len(table.approx))] = True
        self.position = np.full(n, -1, dtype=np.int64)  # atom index of each root within its group

    def __call__(self, gid: int, atoms: np.ndarray, blocks: list[Block]) -> Group:
        table = self.table
        self.position[atoms] = np.arange(len(atoms))
        hits = np.nonzero(self.is_frozen[atoms])[0]
        frozen = {int(i): table.frozen[int(atoms[i])] for i in hits}
        approx_hits = np.nonzero(self.is_approx[atoms])[0]
        approx = table.approx[int(atoms[approx_hits[0]])] if len(approx_hits) else None
        grp = Group(gid, atoms, blocks, frozen, approx)
        grp.block_atom_index = {b.base: self.position[self.roots_of[b.base]] for b in blocks}
        # channels per atom of the narrowest layer that sets the alignment: > 1 for grouped convs, GroupNorm
        # and heads; a depthwise conv on a slice of the width (a per-head split) does not set it
        layers = [b for b in blocks if not b.passive]
        aligned = [b for b in layers if sets_alignment(self.model, b)] or layers
        model, distinct = self.model, self.distinct
        per_atom = (b.size * channels_per_slot(model, b) // max(distinct.get(b.base, 0), 1) for b in aligned)
        grp.divisor = min(per_atom, default=1)
        return grp


class AtomPlaces(Mapping):
    """``{slot root: (group, atom index)}`` for every atom of ``groups``, held as two arrays over the slots
    (a dict built atom by atom costs 10 ms on ResNet-152's 29k atoms; most lookups never happen)."""

    def __init__(self, groups: list[Group], n_slots: int) -> None:
        self.groups = groups
        self.owner = np.full(n_slots, -1, dtype=np.int64)
        self.index = np.full(n_slots, -1, dtype=np.int64)
        for k, g in enumerate(groups):
            self.owner[g.atoms] = k
            self.index[g.atoms] = np.arange(len(g.atoms))

    def __getitem__(self, root: int) -> tuple[Group, int]:
        if not isinstance(root, (int, np.integer)) or not 0 <= root < len(self.owner) or self.owner[root] < 0:
            raise KeyError(root)
        return self.groups[int(self.owner[root])], int(self.index[root])

    def __iter__(self) -> Iterator[int]:
        return iter(np.nonzero(self.owner >= 0)[0].tolist())

    def __len__(self) -> int:
        return int(np.count_nonzero(self.owner >= 0))


def _attach_constraints(result: PropagationResult, groups: list[Group], table: SlotTable) -> None:
    """Record ``chunk`` pieces as equal-parts constraints of the group that holds them."""
    where = AtomPlaces(groups, len(table))
    choosers, handled, freeze = shuffle_choosers(result, where)
    for grp, i, reason in freeze:
        grp.frozen.setdefault(i, reason)
    for kind, pieces, _ in result.constraints:
        if kind != "equal_parts" or id(pieces[0]) in handled:
            continue
        mapped = [[where.get(int(r)) for r in table.roots(p).tolist()] for p in pieces]
        owners = {m[0].id for piece in mapped for m in piece if m is not None}
        if len(owners) != 1:
            continue
        grp = next(m[0] for piece in mapped for m in piece if m is not None)
        idx_pieces = _distinct_pieces([np.array([m[1] for m in piece if m is not None]) for piece in mapped])
        if len(idx_pieces) < 2:
            continue  # every piece holds the same atoms: they lose equal counts by construction
        flat = np.concatenate(idx_pieces)
        if any(_same_pieces(e, idx_pieces) for e in grp.equal_parts):
            continue  # the same pieces again (one split in every block of a stage)
        weighted = None if grp.equal_parts or grp.id in choosers else equal_channel_quotas(grp, idx_pieces)
        if weighted is not None and len(np.unique(flat)) != len(flat):
            choosers[grp.id] = weighted  # pieces whose atoms stand for different channel counts
            continue
        if len(np.unique(flat)) != len(flat) or grp.equal_parts:
            # an atom in two pieces, or a second constraint: keep all pieces equal position by position
            lengths = {len(p) for p in idx_pieces}
            if len(lengths) == 1:
                for p in idx_pieces[1:]:
                    for a, b in zip(idx_pieces[0], p):
                        if a != b:
                            grp.frozen.setdefault(int(b), "chunk pieces coupled in two ways")
                            grp.frozen.setdefault(int(a), "chunk pieces coupled in two ways")
            else:  # pieces of different lengths that share atoms: no position-by-position rule
                for i in np.unique(flat).tolist():
                    grp.frozen.setdefault(int(i), "chunk pieces of unequal sizes coupled in two ways")
            continue
        grp.equal_parts.append(idx_pieces)
    for g in groups:
        if g.id in choosers and choosers[g.id].absorb(g.equal_parts):
            g.chooser, g.equal_parts = choosers[g.id], []
        elif g.id in choosers:
            g.frozen.update({i: "channel shuffle next to chunk constraints" for i in range(g.width)})


def _distinct_pieces(pieces: list[np.ndarray]) -> list[np.ndarray]:
    """``pieces`` without those that hold the same atoms as an earlier one.

    EdgeNeXt's SplitTransposeBlock adds ``chunk`` piece i to the output of piece i-1's depthwise conv, which
    ties the pieces' channels one to one: they share their atoms, so removing one removes a channel from
    each, and only the pieces with atoms of their own must be kept at equal counts.
    """
    seen: list[np.ndarray] = []
    out = []
    for p in pieces:
        key = np.sort(p)
        if not any(np.array_equal(key, k) for k in seen):
            seen.append(key)
            out.append(p)
    return out


def _same_pieces(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(np.array_equal(x, y) for x, y in zip(a, b))
