"""Channel shuffles followed as permutations of channels.

``x.view(b, g, c // g, h, w).transpose(1, 2).view(b, c, h, w)`` (and ``channel_shuffle``) moves channel
``r * n + j`` (row ``r``, column ``j``, ``n = c // g``) to ``j * g + r``. The slim model runs the same
code on fewer channels: the view cuts them *by count* into ``g`` rows and reads them column by column,
so the kept channels come out interleaved by rank, not in ascending order. Following that:

* the output gets the input's labels, permuted: no channel is tied to another by its position (tying
  row ``r``'s channel ``j`` to row 0's, as a head split does, makes ShuffleNetV2's chunk-and-shuffle
  chain tie ever more channels together until a whole stage freezes);
* the counts the slim model relies on (equal rows, and every later ``chunk`` cutting the shuffled order
  where the original cuts its channels) become per-layer quotas, see :mod:`.shuffle_quotas`;
* slimming gathers the inputs of the layers downstream in the order the slim model delivers them, see
  :mod:`.channel_order`.

A shuffle is followed this way only when everything its channels reach before a layer consumes them is
an op whose effect on the order is known (:func:`flow_step`); otherwise the rows are tied position by
position as before.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch.fx as fx
from torch import nn

from .context import OpContext, op_name
from .labels import Labels
from .sizes import IntInfo
from .slots import SlotTable

__all__ = [
    "PERMUTATION",
    "Shuffle",
    "finish_shuffle_view",
    "flow_step",
    "order_is_followed",
    "shuffle_chain",
    "shuffle_labels",
    "start_shuffle_view",
]

PERMUTATION = "channel_permutation"  # kind of the propagation constraints recording a followed shuffle

_PENDING: weakref.WeakKeyDictionary[SlotTable, dict] = weakref.WeakKeyDictionary()
_PASS_OPS = {"contiguous", "clone", "relu", "relu6", "hardtanh", "hardswish", "silu", "gelu", "sigmoid"}
_PASS_MODULES = (
    nn.ReLU, nn.ReLU6, nn.SiLU, nn.GELU, nn.Hardswish, nn.Sigmoid, nn.LeakyReLU, nn.Identity,
    nn.modules.dropout._DropoutNd, nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AvgPoolNd,
    nn.modules.pooling._AdaptiveAvgPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd,
)  # fmt: skip


@dataclass(frozen=True)
class Shuffle:
    """A followed shuffle: ``merge`` outputs ``source``'s dim ``dim`` permuted as ``g`` rows interleaved.

    ``chain`` lists the nodes between them (the splitting view and the transpose); empty for a
    ``channel_shuffle`` call, which is its own ``merge``.
    """

    merge: fx.Node
    source: fx.Node
    dim: int
    ndim: int
    g: int
    chain: tuple[fx.Node, ...] = ()


def _dim(node: fx.Node, position: int, default: int, ndim: int) -> int:
    d = node.args[position] if len(node.args) > position else node.kwargs.get("dim", default)
    return d % ndim if isinstance(d, int) else -1


def _only_user(node: fx.Node) -> fx.Node | None:
    users = list(node.users)
    return users[0] if len(users) == 1 else None


def _swaps(node: fx.Node, d: int, ndim: int) -> bool:
    """Whether ``node`` swaps dims ``d`` and ``d + 1`` of an ``ndim``-dim tensor and nothing else."""
    name = op_name(node)
    if name in ("transpose", "swapaxes", "swapdims"):
        dims = [a for a in node.args[1:3] if isinstance(a, int)]
        return len(dims) == 2 and {x % ndim for x in dims} == {d, d + 1}
    if name == "permute":
        perm = node.args[1:]
        perm = perm[0] if len(perm) == 1 and isinstance(perm[0], (list, tuple)) else perm
        want = list(range(ndim))
        want[d], want[d + 1] = d + 1, d
        return all(isinstance(p, int) for p in perm) and [p % ndim for p in perm] == want
    return False


def shuffle_chain(view: fx.Node, d: int, ndim: int) -> Shuffle | None:
    """The shuffle starting at ``view`` (a view/reshape splitting dim ``d`` of an ``ndim``-dim tensor into
    a literal ``g`` and the rest), when it goes on only into a swap of the two dims and a merge of them."""
    if op_name(view) not in ("view", "reshape") or view.op not in ("call_method", "call_function"):
        return None
    sizes = view.args[1:] if view.op == "call_method" else view.args[1:2]
    if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
        sizes = sizes[0]
    if len(sizes) != ndim + 1 or not isinstance(sizes[d], int) or sizes[d] < 2 or _literal(sizes[d + 1]):
        return None
    swap = _only_user(view)
    if swap is None or not _swaps(swap, d, ndim + 1):
        return None
    chain, merge = [view, swap], _only_user(swap)
    if merge is not None and op_name(merge) == "contiguous":
        chain.append(merge)
        merge = _only_user(merge)
    if merge is None or op_name(merge) not in ("view", "reshape", "flatten"):
        return None
    if op_name(merge) == "flatten":
        if [a % (ndim + 1) for a in merge.args[1:3] if isinstance(a, int)] != [d, d + 1]:
            return None
    else:
        out = merge.args[1:] if merge.op == "call_method" else merge.args[1:2]
        out = out[0] if len(out) == 1 and isinstance(out[0], (list, tuple)) else out
        if len(out) != ndim or _literal(out[d]):
            return None
    return Shuffle(merge, view.args[0], d, ndim, sizes[d], tuple(chain))


def _literal(size: object) -> bool:
    """A size written as a number (it would not follow pruning); -1 is inferred."""
    return isinstance(size, int) and size != -1


def flow_step(gm: fx.GraphModule, user: fx.Node, d: int, ndim: int) -> tuple[str, object]:
    """How channels on dim ``d`` flow into ``user``: ("through" | "stop" | "ignore" | "shuffle", detail);
    ("unknown", None) when this module cannot say how the op orders them."""
    if user.op == "call_module":
        m = gm.get_submodule(user.target)
        if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed and d == 1:
            if m.groups == 1:
                return "stop", (m, 1)
            if m.groups == m.in_channels == m.out_channels:
                return "through", (m, 0)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm) and d == 1:
            return "through", (m, 0)
        elif isinstance(m, nn.Linear) and d == ndim - 1:
            return "stop", (m, 1)
        elif isinstance(m, nn.ChannelShuffle) and d == 1:
            return "shuffle", Shuffle(user, user.args[0], d, ndim, m.groups)
        elif isinstance(m, _PASS_MODULES):
            return "through", None
        return "unknown", None
    if user.op not in ("call_function", "call_method"):
        return "unknown", None
    name = op_name(user)
    if name in ("size", "dim") or name == "getattr" and user.args[1] == "shape":
        return "ignore", None
    if name in _PASS_OPS:
        return "through", None
    if name == "getitem" and isinstance(user.args[1], int) and op_name(user.args[0]) in ("chunk", "split"):
        return "through", None
    if name in ("cat", "concat", "concatenate") and _dim(user, 1, 0, ndim) == d:
        return "through", None
    if name in ("chunk", "split") and _dim(user, 2, 0, ndim) == d and isinstance(user.args[1], int):
        return "through", None  # pieces cut by count (split with a list of sizes is not followed)
    if name in ("channel_shuffle", "native_channel_shuffle") and d == 1:
        g = user.args[1] if len(user.args) > 1 else user.kwargs.get("groups")
        if not isinstance(g, int):
            return "unknown", None
        return "shuffle", Shuffle(user, user.args[0], d, ndim, g)
    chain = shuffle_chain(user, d, ndim)
    return ("shuffle", chain) if chain is not None else ("unknown", None)


def order_is_followed(gm: fx.GraphModule, start: fx.Node, d: int, ndim: int) -> bool:
    """Whether every op the channels of ``start`` reach before a layer consumes them is one whose effect
    on the channel order :func:`channel_orders` knows (the model's output is not one)."""
    todo, seen = [start], set()
    while todo:
        node = todo.pop()
        if node in seen:
            continue
        seen.add(node)
        for user in node.users:
            kind, detail = flow_step(gm, user, d, ndim)
            if kind == "unknown":
                return False
            if kind in ("through", "shuffle"):
                todo.append(detail.merge if kind == "shuffle" else user)
    return True


def shuffle_labels(ctx: OpContext, g: int) -> Labels | None:
    """Labels of ``channel_shuffle(x, g)`` followed as a permutation (None: not followable here)."""
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    if set(lab) != {1} or x.shape[1] % g or not order_is_followed(ctx.root, ctx.node, 1, x.dim()):
        return None
    rows = lab[1].reshape(g, -1)
    ctx.constraints.append((PERMUTATION, Shuffle(ctx.node, ctx.node.args[0], 1, x.dim(), g), ctx.where))
    return {1: rows.T.reshape(-1).copy()}


def start_shuffle_view(ctx: OpContext) -> Labels | None:
    """At the view that opens a shuffle: keep the permuted labels for the merging view and label the
    intermediate tensors with nothing (None: not a followable shuffle)."""
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    if len(lab) != 1 or ctx.graph_is_export or not hasattr(ctx.root, "graph"):
        return None
    (d, a), nd = next(iter(lab.items())), x.dim()
    chain = shuffle_chain(ctx.node, d, nd)
    out = ctx.out_shape
    if chain is None or out[:d] != tuple(x.shape[:d]) or out[d + 2 :] != tuple(x.shape[d + 1 :]):
        return None
    if out[d] * out[d + 1] != x.shape[d] or out[d + 1] < 2 or not _sizes_from(ctx, a):
        return None
    if not order_is_followed(ctx.root, chain.merge, d, nd):
        return None
    rows = a.reshape(out[d], out[d + 1])
    _PENDING.setdefault(ctx.table, {})[chain.merge] = (d, rows.T.reshape(-1).copy(), tuple(x.shape))
    ctx.constraints.append((PERMUTATION, chain, ctx.where))
    return {}


def finish_shuffle_view(ctx: OpContext) -> Labels | None:
    """At the view that closes a followed shuffle: its permuted labels (None: this view closes none)."""
    pending = _PENDING.get(ctx.table, {}).pop(ctx.node, None)
    if pending is None:
        return None
    d, merged, shape = pending
    if ctx.out_shape != shape or not _sizes_from(ctx, merged):
        ctx.table.freeze(merged, f"{ctx.where}: channel shuffle not merged back")
        return {}
    return {d: merged}


def _sizes_from(ctx: OpContext, channels: np.ndarray) -> bool:
    """Whether every size argument read from a channel dim was read from these channels (any order)."""
    own = set(ctx.table.roots(channels).tolist())
    infos = [i for i in ctx.largs[1:] for i in (i if isinstance(i, (list, tuple)) else [i])]
    return all(
        set(ctx.table.roots(src).tolist()) == own
        for info in infos
        if isinstance(info, IntInfo)
        for src in info.sources
    )
