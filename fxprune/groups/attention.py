"""``nn.MultiheadAttention``: whole heads are removed, together with the embedding channels they span.

The module uses one width for its input, its heads and its output (``embed_dim``), so removing a head
also removes ``head_dim`` embedding channels; the per-head scaling stays as it is, which keeps the
result exact where the embedding channels are not normalised together (LayerNorm makes it approximate).
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .context import OpContext

__all__ = ["multihead_attention"]


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
