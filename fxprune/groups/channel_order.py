"""The order in which a slim model delivers channels that went through a followed channel shuffle.

After a shuffle (:mod:`.permutation`) the slim model's tensors list their kept channels in an order that
depends on which channels were removed: a shuffle reads its rows column by column, and a ``chunk`` cuts
that order by count. :func:`channel_orders` replays the graph on the kept channel indices of each such
tensor, up to the layers that consume them, and returns the order in which each layer must take its
input channels (``fxprune.slim.slim_model(..., orders=...)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch.fx as fx

from .context import op_name
from .permutation import PERMUTATION, Shuffle, flow_step

__all__ = ["channel_orders", "interleave"]

_PER_CHANNEL_PARAMS = ("weight", "bias", "running_mean", "running_var")


def channel_orders(
    propagation, graph_module: fx.GraphModule, groups, removed: Mapping[int, np.ndarray]
) -> dict[tuple[str, int], np.ndarray]:
    """``{(parameter name, dim): kept indices in the order the slim model delivers them}`` for the layers
    fed by a followed shuffle (the others read their kept channels in ascending order).

    ``propagation`` and ``graph_module`` are the analysis' (``Analysis.propagation``,
    ``Analysis.captured.graph_module``); ``removed`` maps a group id to the atoms removed from it.
    """
    shuffles = [c[1] for c in propagation.constraints if c[0] == PERMUTATION]
    dead = [g.atoms[np.asarray(removed.get(g.id, []), dtype=np.int64)] for g in groups]
    dead = np.concatenate(dead) if dead else np.zeros(0, dtype=np.int64)
    if not shuffles or not len(dead):
        return {}
    return _Replay(propagation, graph_module, dead, shuffles).run()


class _Replay:
    """Walks the graph once, carrying for each tensor fed by a shuffle its kept channels in slim order."""

    def __init__(self, propagation, gm: fx.GraphModule, dead: np.ndarray, shuffles: list[Shuffle]):
        self.prop, self.gm, self.dead = propagation, gm, dead
        self.starts = {s.merge: s for s in shuffles}
        self.skip = {n for s in shuffles for n in s.chain}
        self.seq: dict[fx.Node, object] = {}  # (kept positions in slim order, width), or a list of them
        self.orders: dict[tuple[str, int], np.ndarray] = {}
        self.dims = {s.merge: (s.dim, s.ndim) for s in shuffles}  # channel dim and rank of carried tensors

    def kept(self, node: fx.Node, d: int, piece: int | None = None) -> tuple[np.ndarray, int]:
        lab = self.prop.labels.get(node)
        lab = lab[piece] if piece is not None else lab
        a = (lab or {}).get(d)
        if a is None:
            raise RuntimeError(f"channel order: no channel labels at {node.name}")
        return np.nonzero(~np.isin(self.prop.table.roots(a), self.dead))[0], len(a)

    def value(self, node: fx.Node, d: int) -> tuple[np.ndarray, int]:
        return self.seq[node] if node in self.seq else self.kept(node, d)

    def run(self) -> dict[tuple[str, int], np.ndarray]:
        for node in self.gm.graph.nodes:
            if node in self.starts:
                s = self.starts[node]
                self.seq[node] = interleave(*self.value(s.source, s.dim), s.g, node.name)
            elif node not in self.skip and any(a in self.seq for a in node.all_input_nodes):
                self.visit(node)
        return self.orders

    def visit(self, node: fx.Node) -> None:
        src = next(a for a in node.all_input_nodes if a in self.seq)
        d, ndim = self.dims[src]
        kind, detail = flow_step(self.gm, node, d, ndim)
        if kind == "unknown":
            raise RuntimeError(f"channel order: {node.name} reorders channels in a way not followed")
        if kind == "ignore":
            return
        if kind == "shuffle":
            self.starts[detail.merge] = detail
            self.skip.update(detail.chain)
            self.dims[detail.merge] = (d, ndim)
            if not detail.chain:
                self.seq[node] = interleave(*self.seq[src], detail.g, node.name)
            return
        if detail is not None:
            self.gather(node, detail, self.seq[src])
        if kind == "stop":
            return
        self.dims[node] = (d, ndim)
        name = op_name(node)
        if name in ("cat", "concat", "concatenate"):
            parts = [self.value(t, d) for t in node.args[0]]
            offsets = np.cumsum([0] + [w for _, w in parts])
            self.seq[node] = (np.concatenate([p + o for (p, _), o in zip(parts, offsets)]), int(offsets[-1]))
        elif name in ("chunk", "split"):
            self.seq[node] = self.split(node, d, self.seq[src])
        elif name == "getitem":
            self.seq[node] = self.seq[src][node.args[1]]
        else:
            self.seq[node] = self.seq[src]

    def split(self, node: fx.Node, d: int, value: tuple[np.ndarray, int]) -> list:
        order, pieces, start, offset = value[0], [], 0, 0
        for i in range(len(self.prop.labels[node])):
            kept, width = self.kept(node, d, i)
            part = order[start : start + len(kept)]
            if not np.array_equal(np.sort(part), kept + offset):
                raise RuntimeError(f"channel order: {node.name} splits kept channels unevenly")
            pieces.append((part - offset, width))
            start, offset = start + len(kept), offset + width
        return pieces

    def gather(self, node: fx.Node, detail: tuple, value: tuple[np.ndarray, int]) -> None:
        module, dim = detail
        order, width = value
        for attr in _PER_CHANNEL_PARAMS if dim == 0 else ("weight",):
            t = getattr(module, attr, None)
            if t is not None and t.dim() > dim and t.shape[dim] == width:
                self.orders[(f"{node.target}.{attr}", dim)] = order


def interleave(order: np.ndarray, width: int, g: int, where: str) -> tuple[np.ndarray, int]:
    """Slim order after a shuffle of ``width`` channels delivered in ``order``: ``g`` rows cut by count,
    read column by column (positions are the shuffle's output channels)."""
    n = width // g
    if len(order) % g:
        raise RuntimeError(f"channel order: {where} gets {len(order)} channels, not a multiple of {g}")
    rows = order.reshape(g, -1)
    if not (rows // n == np.arange(g)[:, None]).all():
        raise RuntimeError(f"channel order: {where} keeps different counts in its rows")
    cols = rows - n * np.arange(g)[:, None]
    return (cols * g + np.arange(g)[:, None]).T.reshape(-1), width
