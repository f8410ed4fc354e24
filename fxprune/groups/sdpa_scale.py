"""``F.scaled_dot_product_attention`` without ``scale=``: its head size can be pruned all the same.

Without ``scale=``, sdpa divides the scores by the square root of the head size it is given, so removing
head channels changes that factor. Where the queries are rows of one layer's output moved into place by
views, permutes and unbinds (timm's ``Attention``: ``qkv(x).reshape(B, N, 3, H, D).permute(...)
.unbind(0)``), the factor folds into that layer: multiplying the query rows of its weight and bias by
``sqrt(kept / dense)`` at slim time gives ``q' k'^T / sqrt(kept) = q k^T / sqrt(dense)``, the dense scores
of the kept channels. The slim model keeps its own ``forward``; only those rows change.

The analysis walks back from the query (or key) through ops that move values without changing them
(views, permutes, unbind, split, indexing, identity modules, products with a number) to a layer whose
output is linear in its weight and bias (``Linear``, a conv, an affine norm), and replays that path on
the layer's channel indices to find which of its rows reach the query. :class:`ScaleFold` records them;
``fxprune.slim`` applies it before slicing. Any other path keeps sdpa's guard: the head size freezes.
"""

from __future__ import annotations

import math
import weakref
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.fx as fx
from torch import nn
from torch.utils._python_dispatch import _disable_current_modes

from .channel_constants import ChannelConstant
from .context import OpContext, op_name

__all__ = ["SCALE_FOLD", "ScaleFold", "can_fold_scale", "find_scale_fold", "note_shapes", "scale_folds"]

SCALE_FOLD = "sdpa_scale_fold"  # constraint kind; payload (head labels, module, targets)
_SHAPES = "fxprune_shapes"  # node.meta key: (input shape, output shape) seen by the analysis
_SAME = frozenset("contiguous clone to float detach dropout".split())
_MOVES = frozenset(
    "permute transpose swapaxes view reshape _unsafe_view flatten unflatten squeeze unsqueeze "
    "unbind chunk split getitem".split()
)
_BY_NUMBER = frozenset("mul truediv div".split())


@dataclass
class ScaleFold(ChannelConstant):
    """Multiply ``targets`` rows by ``sqrt(kept / size)`` where ``kept`` counts the kept channels among
    ``roots`` (the head size of an sdpa call without ``scale=``); ``attr`` is empty (nothing written).

    ``targets``: ``(parameter, dim, row_roots, rows)``: the class of every dense row of that dim (to
    renumber rows a previous slimming step removed) and the dense rows to scale.
    """

    size: int = 0
    targets: tuple = field(default=(), repr=False)


def note_shapes(ctx: OpContext) -> None:
    """Remember the input and output shapes of a view-like op for :func:`find_scale_fold` (which runs
    later, when the values are gone)."""
    x = ctx.args[0] if ctx.args else None
    if isinstance(x, torch.Tensor):
        out = tuple(ctx.out.shape) if isinstance(ctx.out, torch.Tensor) else None
        ctx.node.meta[_SHAPES] = (tuple(x.shape), out)


def _producer_dim(node: fx.Node) -> tuple[nn.Module, int] | None:
    """``(module, output channel dim)`` of a layer call whose output is linear in its weight and bias."""
    if node.op != "call_module":
        return None
    m = node.graph.owning_module.get_submodule(node.target)
    w = getattr(m, "weight", None)
    if not isinstance(w, nn.Parameter):
        return None
    if isinstance(m, nn.Linear):
        return m, -1
    if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed:
        return m, 1
    if isinstance(m, (nn.LayerNorm, nn.RMSNorm)) and w.dim() == 1:
        return m, -1
    if isinstance(m, (nn.modules.batchnorm._NormBase, nn.GroupNorm)) and w.dim() == 1:
        return m, 1
    return None


def _passes(node: fx.Node) -> bool:
    """An op that hands its first input on, moved but not mixed (or times a number)."""
    if node.op == "call_module":
        m = node.graph.owning_module.get_submodule(node.target)
        return isinstance(m, (nn.Identity, nn.modules.dropout._DropoutNd))
    name = op_name(node)
    if name in _SAME:
        return True
    if name in _BY_NUMBER:
        return len(node.args) == 2 and isinstance(node.args[1], (int, float)) and not node.kwargs
    return name in _MOVES


def _chain(sdpa: fx.Node, arg: int) -> tuple[fx.Node, list[fx.Node]] | None:
    """The layer call feeding argument ``arg`` of ``sdpa`` and the ops between them (layer side first),
    when every op only moves values and each value on the way goes nowhere else."""
    node = sdpa.args[arg] if arg < len(sdpa.args) else None
    if not isinstance(node, fx.Node) or list(sdpa.args[:3]).count(node) != 1:
        return None
    chain: list[fx.Node] = []
    nxt = sdpa
    for _ in range(24):
        if not _only_feeds(node, nxt):
            return None
        if _producer_dim(node) is not None:
            return (node, chain[::-1]) if _module_calls(node.graph)[node.target] == 1 else None
        if not _passes(node) or not node.args or not isinstance(node.args[0], fx.Node):
            return None
        chain.append(node)
        node, nxt = node.args[0], node
    return None


_CALLS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module_calls(graph: fx.Graph) -> Counter:
    """How many times the graph calls each module (counted once per graph and size of it)."""
    n_nodes = len(graph.nodes)
    cached = _CALLS.get(graph)
    if cached is None or cached[0] != n_nodes:
        counts = Counter(n.target for n in graph.nodes if n.op == "call_module")
        cached = _CALLS[graph] = (n_nodes, counts)
    return cached[1]


def _only_feeds(node: fx.Node, user: fx.Node) -> bool:
    """``node``'s value reaches ``user`` only (a tuple's items: no other ``getitem`` of the same item)."""
    if op_name(node) in ("unbind", "chunk", "split") and op_name(user) == "getitem":
        same = [u for u in node.users if op_name(u) == "getitem" and u.args[1] == user.args[1]]
        return all(op_name(u) == "getitem" for u in node.users) and same == [user]
    return list(node.users) == [user]


def can_fold_scale(sdpa: fx.Node) -> bool:
    """Whether an sdpa call's default scale can be folded into the layer that makes its query or key."""
    return _chain(sdpa, 0) is not None or _chain(sdpa, 1) is not None


def _no_nodes(args: tuple) -> bool:
    found = []
    fx.node.map_arg(args, found.append)
    return not found


def _replay(node: fx.Node, value):
    """``node`` applied to ``value`` (its first input) with its own literal arguments."""
    name = op_name(node)
    if node.op == "call_module" or name in _SAME or name in _BY_NUMBER:
        return value
    if name in ("view", "reshape", "_unsafe_view"):
        return value.reshape(node.meta[_SHAPES][1])
    if name == "getitem" and isinstance(value, (list, tuple)):
        return value[node.args[1]]
    if name == "getitem":
        index = node.args[1]
        if not _no_nodes((index,)):
            raise ValueError("index computed at run time")
        return value[index]
    rest, kwargs = node.args[1:], dict(node.kwargs)
    if not _no_nodes((rest, kwargs)):
        raise ValueError("size computed at run time")
    return getattr(torch.Tensor, name)(value, *rest, **kwargs)


def _rows(producer: fx.Node, chain: list[fx.Node], shape: tuple[int, ...]) -> np.ndarray | None:
    """The producer's output channels that the end of ``chain`` holds, replayed on channel indices (real
    CPU tensors, outside the meta, fake or cost-recording modes the propagation runs under)."""
    with _disable_current_modes():
        return _replayed_rows(producer, chain, shape)


def _replayed_rows(producer: fx.Node, chain: list[fx.Node], shape: tuple[int, ...]) -> np.ndarray | None:
    m, dim = _producer_dim(producer)
    recorded = [n.meta.get(_SHAPES) for n in chain]
    first = next((s[0] for s in recorded if s is not None), None)
    start = first if first is not None else shape
    dim %= len(start)
    view = [1] * len(start)
    view[dim] = start[dim]
    value = torch.arange(start[dim], device="cpu").reshape(view).expand(start)  # stride 0 off the channels
    try:
        for n in chain:
            value = _replay(n, value)
    except (ValueError, RuntimeError, TypeError, IndexError, KeyError):
        return None
    if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape):
        return None
    value = value[tuple(0 if s == 0 else slice(None) for s in value.stride())]
    return torch.unique(value).numpy()


def _targets(producer: fx.Node) -> list[tuple[str, int]]:
    m = producer.graph.owning_module.get_submodule(producer.target)
    names = [f"{producer.target}.weight"]
    if isinstance(getattr(m, "bias", None), nn.Parameter):
        names.append(f"{producer.target}.bias")
    return [(n, 0) for n in names]


def find_scale_fold(ctx: OpContext, head: np.ndarray) -> bool:
    """For an sdpa call without ``scale=`` whose head size ``head`` (labels) may be pruned: record where
    its scale folds (query rows, else key rows) and return True; False when it cannot fold."""
    for arg in (0, 1):
        found = _chain(ctx.node, arg)
        if found is None:
            continue
        producer, chain = found
        rows = _rows(producer, chain, tuple(ctx.args[arg].shape))
        if rows is None or len(rows) == 0:
            continue
        targets = [(name, d, rows) for name, d in _targets(producer)]
        ctx.constraints.append((SCALE_FOLD, (head, str(producer.target), targets), ctx.where))
        return True
    return False


def scale_folds(prop) -> list[ScaleFold]:
    """The :class:`ScaleFold` of every sdpa call whose scale folds, with the classes found by ``prop``."""
    table = prop.table
    out = []
    for kind, payload, _ in prop.constraints:
        if kind != SCALE_FOLD:
            continue
        head, module, targets = payload
        found = []
        for name, d, rows in targets:
            slots = table.slots_of((name, d))
            if slots is None:
                break
            found.append((name, d, table.roots(slots), rows))
        else:
            out.append(ScaleFold(module, "", table.roots(head), len(head), tuple(found)))
    return out


def scale_factor(before: int, after: int) -> float:
    """The factor that keeps ``q k^T / sqrt(size)`` when the size goes from ``before`` to ``after``."""
    return math.sqrt(after / before)
