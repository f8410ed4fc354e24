"""Attention and matrix products: ``matmul``, ``einsum``, ``scaled_dot_product_attention``, and
``nn.MultiheadAttention``.

A contraction couples the channels it sums over; ``nn.MultiheadAttention`` loses whole heads, together
with the embedding channels they span. The module uses one width for its input, its heads and its output
(``embed_dim``), so removing a head also removes ``head_dim`` embedding channels; the per-head scaling
stays as it is, which keeps the result exact where the embedding channels are not normalised together
(LayerNorm makes it approximate).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .channel_constants import register_channel_constant
from .context import OpContext, op_name
from .labels import Labels, broadcast_labels
from .registry import handles_modules, handles_ops
from .sdpa_scale import can_fold_scale, find_scale_fold

__all__ = ["einsum", "matmul", "multihead_attention", "head_size_fixed", "sdpa"]

# torchvision's MaxViT reshapes q, k and v to ``(B, G, P, self.n_heads, self.head_dim)``: the head count
# follows pruning (whole heads go), the head size stays.
register_channel_constant("torchvision.models.maxvit.RelativePositionalMultiHeadAttention", "n_heads")
# timm's ``Attention`` (ViT, DeiT, MobileViT's transformer...) reshapes qkv to ``(B, N, 3, self.num_heads,
# self.head_dim)`` and its output back to ``(B, N, self.attn_dim)``. A traced graph follows the head size
# (:mod:`.reshape`); an exported one, whose sizes are all numbers, follows the registered head count.
register_channel_constant("timm.layers.attention.Attention", "num_heads", "attn_dim")


def _batch_labels(ctx: OpContext, operands: list[tuple[Any, Labels]]) -> Labels:
    """Labels of the broadcast batch dims (all but the last two) of several operands."""
    return broadcast_labels(
        ctx.table,
        [(tuple(t.shape[:-2]), {d: x for d, x in lab.items() if d < t.dim() - 2}) for t, lab in operands],
        ctx.out_shape[:-2],
    )


def _contract(ctx: OpContext, xa: Any, xb: Any, reason: str) -> None:
    """Couple the two sides of a contracted dim; a side without labels freezes the other."""
    if xa is not None and xb is not None:
        ctx.table.union(xa, xb)
    elif xa is not None or xb is not None:
        ctx.table.freeze(xa if xa is not None else xb, reason)


@handles_ops("matmul", "bmm", "mm")
def matmul(ctx: OpContext) -> Labels:
    """``a @ b``: the contracted dim couples ``a``'s last dim to ``b``'s second to last."""
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    la, lb = ctx.larg(0) or {}, ctx.larg(1) or {}
    if a.dim() < 2 or b.dim() < 2:
        return ctx.unsupported_op("matmul with a vector")
    _contract(ctx, la.get(a.dim() - 1), lb.get(b.dim() - 2), f"{ctx.where}: contraction with a fixed operand")
    nd = ctx.out.dim()
    out = _batch_labels(ctx, [(a, la), (b, lb)])
    if a.dim() - 2 in la:
        out[nd - 2] = la[a.dim() - 2]
    if b.dim() - 1 in lb:
        out[nd - 1] = lb[b.dim() - 1]
    return out


def _einsum_operands(ctx: OpContext) -> tuple[str, list, list] | None:
    """``(equation without spaces, operands, labels)`` of ``einsum(eq, *ops)`` or ``einsum(eq, ops)``."""
    eq = ctx.arg(0, "equation")
    ops, labs = list(ctx.args[1:]), list(ctx.largs[1:])
    if len(ops) == 1 and isinstance(ops[0], (list, tuple)):
        ops, labs = list(ops[0]), list(labs[0] or [None] * len(ops[0]))
    if not isinstance(eq, str) or not all(hasattr(t, "dim") for t in ops):
        return None
    return eq.replace(" ", ""), ops, labs


@handles_ops("einsum")
def einsum(ctx: OpContext) -> Labels:
    """``einsum`` with an explicit output: the dims that share a letter are coupled, summed ones included.

    A letter whose dim has labels in one operand and none in another (of size > 1) freezes them, as a
    contraction with a fixed operand does. Ellipses and repeated letters (diagonals) are not followed.
    """
    got = _einsum_operands(ctx)
    if got is None or "->" not in got[0] or "..." in got[0]:
        return ctx.unsupported_op("einsum without an explicit output")
    eq, ops, labs = got
    lhs, out_spec = eq.split("->")
    specs = lhs.split(",")
    if len(specs) != len(ops) or any(len(s) != t.dim() or len(set(s)) != len(s) for s, t in zip(specs, ops)):
        return ctx.unsupported_op("einsum with repeated letters")
    entries: dict[str, list] = {}
    for spec, t, lab in zip(specs, ops, labs):
        for d, letter in enumerate(spec):
            entries.setdefault(letter, []).append(((lab or {}).get(d), t.shape[d]))
    out: Labels = {}
    for letter, found in entries.items():
        labeled = [a for a, _ in found if a is not None]
        if not labeled:
            continue
        for a in labeled[1:]:
            ctx.table.union(labeled[0], a)
        if any(a is None and size > 1 for a, size in found):
            ctx.table.freeze(labeled[0], f"{ctx.where}: einsum with an operand whose channels stay")
        elif letter in out_spec:
            out[out_spec.index(letter)] = labeled[0]
    return out


_SDPA = "scaled_dot_product_attention"
_SAME_DIMS = frozenset("contiguous clone to float type_as mul truediv div add sub dropout".split())
_NORMALIZING = frozenset("softmax log_softmax normalize".split())


def _default_scale(node: fx.Node) -> bool:
    """An sdpa call without ``scale=``: it divides by the square root of the head size it is given."""
    return node.kwargs.get("scale") is None and (len(node.args) < 7 or node.args[6] is None)


def _dim_arg(node: fx.Node, i: int, name: str, default: Any = None) -> Any:
    args = node.args[1:] if node.op == "call_method" else node.args[1:]
    return args[i] if i < len(args) else node.kwargs.get(name, default)


def _next_dim(src: fx.Node, user: fx.Node, d: int, nd: int) -> tuple[int, int] | bool | None:
    """Where dim ``d`` of ``src`` (of rank ``nd``) lies in ``user``'s output: ``(dim, rank)``; True when
    ``user`` normalises over it (a softmax over it, sdpa without ``scale=`` on it); None: not followed."""
    name = op_name(user)
    if name in _NORMALIZING:
        dim = _dim_arg(user, 0, "dim")
        return True if isinstance(dim, int) and dim % nd == d else (d, nd)
    if name in _SAME_DIMS or (user.op == "call_module" and _weightless_module(user)):
        return (d, nd)
    if name == "permute":
        dims = [x % nd for x in (user.args[1:] if user.op == "call_method" else [])]
        dims = list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else dims
        return (dims.index(d), nd) if d in dims else None
    if name in ("transpose", "swapaxes"):
        a, b = _dim_arg(user, 0, "dim0") % nd, _dim_arg(user, 1, "dim1") % nd
        return ({a: b, b: a}.get(d, d), nd)
    if name == "unbind":
        u = (_dim_arg(user, 0, "dim", 0) or 0) % nd
        return None if u == d else (d - (u < d), nd - 1)
    if name == "getitem" and op_name(src) in ("unbind", "split", "chunk"):
        return (d, nd)  # one tensor of the tuple
    if name == "getitem" and type(user.args[1]) is int:
        return None if d == 0 else (d - 1, nd - 1)
    if name in ("matmul", "bmm"):
        side = user.args.index(src) if src in user.args[:2] else None
        keeps = {0: nd - 2, 1: nd - 1}.get(side)
        return (d, nd) if keeps == d else None
    if name == _SDPA:
        qk = src in user.args[:2] or src in (user.kwargs.get("query"), user.kwargs.get("key"))
        fixed = qk and d == nd - 1 and _default_scale(user) and not can_fold_scale(user)
        return True if fixed else None
    return None


def head_size_fixed(node: fx.Node, dim: int, ndim: int, depth: int = 12) -> bool:
    """Whether dim ``dim`` of ``node``'s output (a head size) must keep its width: it reaches, through
    dim reorders, indexing, matrix products and elementwise ops, a softmax over it (cross-covariance
    attention) or ``scaled_dot_product_attention`` without ``scale=`` as the query's or key's width,
    where that scale cannot fold into the layer making them (:mod:`.sdpa_scale`)."""
    frontier = [(node, dim, ndim)]
    for _ in range(depth):
        nxt = []
        for n, d, nd in frontier:
            for user in n.users:
                found = _next_dim(n, user, d, nd)
                if found is True:
                    return True
                if found is not None and user.op != "output":
                    nxt.append((user, *found))
        frontier = nxt
    return False


def _weightless_module(node: fx.Node) -> bool:
    if node.op != "call_module":
        return False
    m = node.graph.owning_module.get_submodule(node.target)
    return not any(p.dim() > 1 for p in m.parameters()) and not isinstance(m, nn.modules.pooling._MaxPoolNd)


def _freeze_head_size(ctx: OpContext, operands) -> None:
    for lab, t in operands:
        if t.dim() - 1 in lab and t.shape[-1] > 1:
            ctx.table.freeze(lab[t.dim() - 1], f"{ctx.where}: no scale= (1/sqrt of the head size)")


@handles_ops(_SDPA)
def sdpa(ctx: OpContext) -> Labels:
    """Query and key widths are coupled, the sequence dims of key and value freeze, value's width passes.

    Without ``scale=`` the scores are divided by the square root of the query's width. Where that
    factor folds into the layer making the query or key (:mod:`.sdpa_scale`) it is recorded, to be kept
    at slim time; otherwise query and key channels freeze (views that reach such a call follow whole
    heads instead where they can, :mod:`.reshape`).
    """
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    lq, lk, lv = ctx.larg(0) or {}, ctx.larg(1) or {}, ctx.larg(2) or {}
    _contract(ctx, lq.get(q.dim() - 1), lk.get(k.dim() - 1), ctx.where)
    head = lq.get(q.dim() - 1)
    if ctx.node.op == "call_function" and _default_scale(ctx.node) and q.shape[-1] > 1:
        if head is None or not find_scale_fold(ctx, head):
            _freeze_head_size(ctx, ((lq, q), (lk, k)))
    for lab, t in ((lk, k), (lv, v)):
        if t.dim() - 2 in lab:
            ctx.table.freeze(lab[t.dim() - 2], ctx.where)
    operands = [(q, lq), (k, lk), (v, lv)]
    mask, lmask = ctx.arg(3, "attn_mask"), ctx.larg(3, "attn_mask") or {}
    if isinstance(mask, torch.Tensor) and mask.dim() >= 2:  # a bias per head (BEiT's relative positions)
        operands.append((mask, lmask))
        for d in (mask.dim() - 2, mask.dim() - 1):
            if d in lmask:
                ctx.table.freeze(lmask[d], f"{ctx.where}: attention mask over positions")
    out = _batch_labels(ctx, operands)
    if q.dim() - 2 in lq:
        out[ctx.out.dim() - 2] = lq[q.dim() - 2]
    if v.dim() - 1 in lv:
        out[ctx.out.dim() - 1] = lv[v.dim() - 1]
    return out


@handles_modules(nn.MultiheadAttention)
def multihead_attention(ctx: OpContext, m: nn.MultiheadAttention) -> Any:
    if not m._qkv_same_embed_dim or m.in_proj_weight is None or m.bias_k is not None:
        return ctx.unsupported_op("MultiheadAttention with separate or extra key/value projections")
    name, table = ctx.module_name, ctx.table
    e, h = m.embed_dim, m.num_heads
    d = e // h
    bias = [(f"{name}.in_proj_bias", 0)] if m.in_proj_bias is not None else []
    out_bias = [(f"{name}.out_proj.bias", 0)] if m.out_proj.bias is not None else []
    rows = table.block(name, ((f"{name}.in_proj_weight", 0), *bias), 3 * e).reshape(3, h, d)
    cols = table.block(name, ((f"{name}.in_proj_weight", 1),), e).reshape(h, d)
    out_rows = table.block(name, ((f"{name}.out_proj.weight", 0), *out_bias), e).reshape(h, d)
    out_cols = table.block(name, ((f"{name}.out_proj.weight", 1),), e).reshape(h, d)
    for head in range(h):
        table.union_all(rows[:, head, :])
        table.union(rows[0, head, :1], cols[head])
        table.union(rows[0, head, :1], out_rows[head])
        table.union(rows[0, head, :1], out_cols[head])
    query = ctx.arg(0, "query")
    for i, key in enumerate(("query", "key", "value")):
        lab = ctx.larg(i, key) or {}
        x = ctx.arg(i, key)
        last = lab.get(x.dim() - 1)
        if last is None:
            table.freeze(cols, f"{ctx.where}: {key} channels cannot be pruned")
        else:
            table.union(last, cols.reshape(-1))
        for dim, other in lab.items():
            if dim != x.dim() - 1:
                table.freeze(other, f"{ctx.where}: channels on a sequence dim")
    out = {query.dim() - 1: out_rows.reshape(-1)}
    return [out, {} if ctx.out[1] is not None else None]
