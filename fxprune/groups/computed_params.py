"""Layer parameters computed in forward: weight standardization, gains, scaled weights.

A conv subclass may transform its weight before calling ``F.conv2d`` (timm's ``ScaledStdConv2d``
standardizes each output filter with ``F.batch_norm(w.reshape(1, out, -1), ..., training=True)`` and a
per-channel gain). The graph then feeds the conv a computed tensor instead of a parameter. Propagation
has already labelled that tensor from the parameters it was computed from (each parameter read labels
its dims; per-channel ops keep the labels), so what forward does decides: an output dim that keeps its
labels is a separable output channel, whatever the class. Statistics taken over a labelled dim (the
fan-in of a standardized filter) change when channels go: those channels are marked approximate.
"""

from __future__ import annotations

import numpy as np
import torch.fx as fx

from .context import OpContext
from .grouped_conv import prune_whole_groups
from .labels import Labels

__all__ = ["computed_batch_norm", "computed_conv", "param_labels"]


def param_labels(ctx: OpContext, i: int, name: str, size: int) -> np.ndarray | None | bool:
    """Slots of dim 0 of a parameter argument: a read parameter's block, a computed tensor's labels.

    False when the argument is absent; None when it is computed but carries no labels of that size.
    """
    node_arg = ctx.node.args[i] if i < len(ctx.node.args) else ctx.node.kwargs.get(name)
    if node_arg is None:
        return False
    if isinstance(node_arg, fx.Node) and node_arg.op == "get_attr":
        owner = node_arg.target.rpartition(".")[0]
        return ctx.table.block(owner, ((node_arg.target, 0),), size, passive=True)
    lab = ctx.larg(i, name)
    a = lab.get(0) if isinstance(lab, dict) else None
    return a if a is not None and len(a) == size else None


def computed_conv(ctx: OpContext, groups: int, transposed: bool) -> Labels | None:
    """A non-transposed conv whose weight is computed from labelled parameters; None if not that."""
    x = ctx.arg(0, "input")
    weight = ctx.arg(1, "weight")
    wlab = ctx.larg(1, "weight")
    if transposed or not isinstance(wlab, dict) or wlab.get(0) is None:
        return None
    node_weight = ctx.node.args[1] if len(ctx.node.args) > 1 else ctx.node.kwargs["weight"]
    sources = _source_parameters(ctx, node_weight)
    if not sources:
        return None
    for target in sources:  # the parameters the weight is computed from are this layer's channels
        owner = target.rpartition(".")[0]
        ctx.table.block(owner, ((target, 0),), weight.shape[0])
        ctx.table.block(owner, ((target, 1),), weight.shape[1])
    cdim = x.dim() - (weight.dim() - 1)
    xlab = ctx.larg(0, "input") or {}
    out = wlab[0]
    depthwise = groups > 1 and weight.shape[1] == 1 and groups == weight.shape[0]
    grouped = groups > 1 and not depthwise
    bias = param_labels(ctx, 2, "bias", weight.shape[0])
    if bias is None or (grouped and xlab.get(cdim) is None):
        return None
    if grouped:  # only whole groups: each kept filter keeps its whole fan-in, so its statistics
        owner = next((t for t in sources if t.endswith(".weight")), sources[0]).rpartition(".")[0]
        if not prune_whole_groups(ctx, xlab[cdim], out, owner, groups, weight.shape[1]):
            return None
        if wlab.get(1) is not None:
            ctx.table.freeze(wlab[1], f"{ctx.where}: a group's input positions (whole groups go)")
    for d, lab in xlab.items():
        if d != cdim:
            ctx.table.freeze(lab, f"{ctx.where}: channels on a spatial dim")
    if not grouped:
        _couple_fan_in(ctx, xlab.get(cdim), out if depthwise else wlab.get(1))
    if bias is not False:
        ctx.table.union(out, bias)
    return {cdim: out}


def _couple_fan_in(ctx: OpContext, x: np.ndarray | None, fan_in: np.ndarray | None) -> None:
    if x is not None and fan_in is not None:
        ctx.table.union(x, fan_in)
    elif x is not None or fan_in is not None:
        for a in (x, fan_in):
            if a is not None:
                ctx.table.freeze(a, f"{ctx.where}: input channels without a matching weight dim")


def _source_parameters(ctx: OpContext, node: object, max_nodes: int = 32) -> list[str]:
    """The parameters of the weight's shape that a computed weight is computed from."""
    shape = tuple(ctx.arg(1, "weight").shape)
    found, todo, seen = [], [node], set()
    while todo and len(seen) < max_nodes:
        n = todo.pop()
        if not isinstance(n, fx.Node) or n in seen:
            continue
        seen.add(n)
        if n.op == "get_attr":
            value = ctx.root
            for part in n.target.split("."):
                value = getattr(value, part, None)
            if getattr(value, "shape", None) == shape:
                found.append(n.target)
        elif n.op in ("call_function", "call_method"):
            todo.extend(n.all_input_nodes)
    return found


def computed_batch_norm(ctx: OpContext, specs: list[tuple[int, str]], training_at: int) -> Labels | None:
    """Batch norm whose affine or statistics arguments are computed; None when one carries no labels.

    With batch statistics (``training=True`` or no running stats), labelled dims other than 1 are
    reduced over: their channels are marked approximate.
    """
    x = ctx.arg(0, "input")
    xlab = dict(ctx.larg(0, "input") or {})
    slots = [param_labels(ctx, i, name, x.shape[1]) for i, name in specs]
    if any(s is None for s in slots):
        return None
    channel = xlab.get(1)
    for s in slots:
        if s is False:
            continue
        if channel is None:
            ctx.table.freeze(s, f"{ctx.where}: per-channel parameters of an unlabelled dim")
        else:
            ctx.table.union(channel, s)
    running = slots[2] is not False and slots[3] is not False
    if bool(ctx.arg(training_at, "training", False)) or not running:
        for d, a in xlab.items():
            if d != 1:
                ctx.table.mark_approx(a, f"statistics over channels ({ctx.where})")
    return xlab
