"""Attention and matrix products: ``matmul``, ``scaled_dot_product_attention``, ``nn.MultiheadAttention``.

A contraction couples the channels it sums over; ``nn.MultiheadAttention`` loses whole heads, together
with the embedding channels they span. The module uses one width for its input, its heads and its output
(``embed_dim``), so removing a head also removes ``head_dim`` embedding channels; the per-head scaling
stays as it is, which keeps the result exact where the embedding channels are not normalised together
(LayerNorm makes it approximate).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .context import OpContext
from .labels import Labels, broadcast_labels
from .registry import handles_modules, handles_ops

__all__ = ["matmul", "multihead_attention", "sdpa"]


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


@handles_ops("scaled_dot_product_attention")
def sdpa(ctx: OpContext) -> Labels:
    """Query and key widths are coupled, the sequence dims of key and value freeze, value's width passes."""
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    lq, lk, lv = ctx.larg(0) or {}, ctx.larg(1) or {}, ctx.larg(2) or {}
    _contract(ctx, lq.get(q.dim() - 1), lk.get(k.dim() - 1), ctx.where)
    for lab, t in ((lk, k), (lv, v)):
        if t.dim() - 2 in lab:
            ctx.table.freeze(lab[t.dim() - 2], ctx.where)
    out = _batch_labels(ctx, [(q, lq), (k, lk), (v, lv)])
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
