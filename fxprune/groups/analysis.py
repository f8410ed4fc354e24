"""Channel groups: the sets of parameter slices that must be removed together, built from propagation."""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .context import Unsupported
from .propagate import PropagationResult
from .slots import Block

__all__ = ["Group", "build_groups"]


@dataclass
class Group:
    """Coupled channels of one or more layers.

    ``atoms[i]`` is a removable unit (a slot class); ``blocks`` are the parameter dimensions it spans;
    ``frozen`` maps atom index -> reason it must stay. ``equal_parts`` lists atom-index pieces that must
    lose the same number of atoms (``chunk``). ``divisor`` is how many channels of the narrowest layer an
    atom stands for (grouped convs, GroupNorm).
    """

    id: int
    atoms: np.ndarray
    blocks: list[Block]
    frozen: dict[int, str] = field(default_factory=dict)
    approx_reason: str | None = None
    equal_parts: list[list[np.ndarray]] = field(default_factory=list)
    divisor: int = 1

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
        hit = {i for b, idx in self._block_atoms() for i in idx if _matches(b.module, pats)}
        for i in hit:
            self.frozen.setdefault(i, reason)

    def _block_atoms(self):
        for b in self.blocks:
            yield b, np.unique(self.block_atom_index[b.base])

    block_atom_index: dict[int, np.ndarray] = field(default_factory=dict, repr=False)


def _matches(name: str, patterns: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def build_groups(result: PropagationResult, model: nn.Module) -> tuple[list[Group], list[Unsupported]]:
    """Turn the slot union-find into groups of atoms."""
    table = result.table
    roots_of = {b.base: table.roots(b.slots) for b in table.blocks}
    anchored = set()
    for b in table.blocks:
        if not b.passive:
            anchored.update(roots_of[b.base].tolist())
    # connect atoms that share a parameter dimension
    parent = {r: r for r in anchored}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    block_group_root = {}
    for b in table.blocks:
        rs = [r for r in dict.fromkeys(roots_of[b.base].tolist()) if r in anchored]
        if not rs:
            continue
        base = find(rs[0])
        for r in rs[1:]:
            rr = find(r)
            if rr != base:
                parent[rr] = base
        block_group_root[b.base] = base
    by_group: dict[int, list[Block]] = {}
    for b in table.blocks:
        if b.base in block_group_root:
            by_group.setdefault(find(block_group_root[b.base]), []).append(b)
    atoms_of: dict[int, list[int]] = {}
    for b in table.blocks:
        for r in roots_of[b.base].tolist():
            if r in anchored:
                g = find(r)
                lst = atoms_of.setdefault(g, [])
                lst.append(r)
    groups: list[Group] = []
    for gid, (g, blocks) in enumerate(sorted(by_group.items(), key=lambda kv: min(b.base for b in kv[1]))):
        atoms = np.array(list(dict.fromkeys(atoms_of[g])), dtype=np.int64)
        index = {int(r): i for i, r in enumerate(atoms)}
        frozen = {}
        approx = None
        for i, r in enumerate(atoms.tolist()):
            reason = table.frozen.get(r)
            if reason is not None:
                frozen[i] = reason
            if approx is None and r in table.approx:
                approx = table.approx[r]
        grp = Group(gid, atoms, blocks, frozen, approx)
        grp.block_atom_index = {
            b.base: np.array([index.get(int(r), -1) for r in roots_of[b.base].tolist()]) for b in blocks
        }
        # channels per atom of the narrowest layer: > 1 for grouped convs and GroupNorm
        grp.divisor = min(
            (b.size // max(len(np.unique(grp.block_atom_index[b.base])), 1) for b in blocks if not b.passive),
            default=1,
        )
        groups.append(grp)
    _attach_constraints(result, groups, table)
    return groups, result.unsupported


def _attach_constraints(result: PropagationResult, groups: list[Group], table) -> None:
    where = {}
    for g in groups:
        for i, r in enumerate(g.atoms.tolist()):
            where[r] = (g, i)
    for kind, pieces, _ in result.constraints:
        if kind != "equal_parts":
            continue
        mapped = [[where.get(int(r)) for r in table.roots(p).tolist()] for p in pieces]
        owners = {m[0].id for piece in mapped for m in piece if m is not None}
        if len(owners) != 1:
            continue
        grp = next(m[0] for piece in mapped for m in piece if m is not None)
        idx_pieces = [np.array([m[1] for m in piece if m is not None]) for piece in mapped]
        flat = np.concatenate(idx_pieces)
        if len(np.unique(flat)) != len(flat) or grp.equal_parts:
            # an atom in two pieces, or a second constraint: keep all pieces equal position by position
            lengths = {len(p) for p in idx_pieces}
            if len(lengths) == 1:
                for p in idx_pieces[1:]:
                    for a, b in zip(idx_pieces[0], p):
                        if a != b:
                            grp.frozen.setdefault(int(b), "chunk pieces coupled in two ways")
                            grp.frozen.setdefault(int(a), "chunk pieces coupled in two ways")
            continue
        grp.equal_parts.append(idx_pieces)
