"""Reductions (mean, sum, amax...) and normalisations along a dim (softmax): a reduced channel dim freezes.

A statistic over channels that keeps the dim (``x.pow(2).mean(1, keepdim=True)`` in an RMSNorm over
channels, the channel mean of a Global Response Norm or of a hand-written LayerNorm, the channel mean and
max of a CBAM-style spatial attention, a channel variance or norm) is a per-position summary of the
channels: removing channels changes it, as it changes a LayerNorm's, so the channels are removed
approximately (``Group.approx_reason``) instead of freezing. A sum (or a reduction that drops the dim)
still freezes them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .context import OpContext, structure_like
from .registry import handles_modules, register_op_handler

__all__ = ["CHANNEL_STATISTICS", "REDUCTIONS", "reduction"]

# op name -> whether the output keeps the input's shape
REDUCTIONS: dict[str, bool] = {
    **dict.fromkeys(
        "mean sum amax amin max min std var prod logsumexp argmax argmin norm var_mean std_mean all any "
        "median linalg_vector_norm".split(),
        False,
    ),
    **dict.fromkeys("softmax log_softmax _softmax _log_softmax cumsum normalize".split(), True),
}

# reductions whose kept-dim result over channels is a statistic: channels removed approximately
CHANNEL_STATISTICS = frozenset("mean amax amin var std norm linalg_vector_norm".split())
# ops whose dim argument comes after another one (``norm(input, p, dim)``, ``normalize(input, p, dim)``)
_DIM_POSITION = {"norm": 2, "linalg_vector_norm": 2, "normalize": 2}


def _dims_arg(ctx: OpContext, ndim: int) -> list[int] | None:
    dim = ctx.arg(_DIM_POSITION.get(ctx.op_name, 1), "dim")
    if dim is None and ctx.node.op == "call_function" and len(ctx.args) > 1 and isinstance(ctx.args[1], list):
        dim = ctx.args[1]
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d + ndim if d < 0 else d for d in dims]


def reduction(keeps_shape: bool = False) -> Callable[[OpContext], Any]:
    """The handler of a reduction; ``keeps_shape`` for ops whose output has the input's shape (softmax)."""

    def handler(ctx: OpContext) -> Any:
        x = ctx.arg(0, "input")
        if not isinstance(x, torch.Tensor):
            return structure_like(ctx.out)
        lab = ctx.larg(0, "input") or {}
        dims = _dims_arg(ctx, x.dim())
        dims = list(range(x.dim())) if dims is None else dims
        out0 = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
        statistic = (ctx.op_name in CHANNEL_STATISTICS and isinstance(out0, torch.Tensor)
                     and out0.dim() == x.dim())
        for d in dims:
            if d in lab and statistic:
                ctx.table.mark_approx(lab[d], f"{ctx.op_name} over channels ({ctx.where})")
            elif d in lab:
                ctx.table.freeze(lab[d], f"{ctx.where}: reduction over channels")
        kept = {d: a for d, a in lab.items() if d not in dims}
        if not isinstance(out0, torch.Tensor):
            return structure_like(ctx.out)
        if keeps_shape or out0.dim() == x.dim():
            result = kept
        else:
            result = {d - sum(1 for r in dims if r < d): a for d, a in kept.items()}
        if isinstance(ctx.out, (tuple, list)):
            return [dict(result) for _ in ctx.out]
        return result

    return handler


@handles_modules(nn.Softmax, nn.LogSoftmax)
def softmax_module(ctx: OpContext, m: nn.Module) -> Any:
    """``nn.Softmax``/``nn.LogSoftmax`` as their functional form (dim 1 when the module leaves it unset)."""
    dim = getattr(m, "dim", None)
    return reduction(True)(ctx.with_inputs(dim if dim is not None else 1))


for _name, _keep in REDUCTIONS.items():
    register_op_handler(_name, reduction(_keep))
