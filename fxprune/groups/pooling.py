"""Ops over the trailing spatial dims (pooling, interpolation, flip, roll): the leading dims keep channels.

A flip along a channel dim reverses its channels (the slim model flips the kept ones in the same order);
a roll along one cannot follow pruning (the shift is in channels), so those channels freeze.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.nn.modules import pooling

from .context import OpContext
from .labels import Labels
from .registry import handles_ops, module_classes_in, register_module_handler, register_op_handler

__all__ = ["POOLING_MODULES", "SPATIAL", "flip_or_roll", "spatial"]

# op name -> number of trailing spatial dims (None: every dim after batch and channels)
SPATIAL: dict[str, int | None] = {
    **{
        f"{kind}{n}d": n
        for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool")
        for n in (1, 2, 3)
    },
    "max_pool1d_with_indices": 1,
    "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3,
    "adaptive_max_pool1d_with_indices": 1,
    "adaptive_max_pool2d_with_indices": 2,
    "adaptive_max_pool3d_with_indices": 3,
    "_adaptive_avg_pool2d": 2,
    "_adaptive_avg_pool3d": 3,
    "interpolate": None,
    "upsample": None,
    "upsample_nearest1d": 1,
    "upsample_nearest2d": 2,
    "upsample_nearest3d": 3,
    "upsample_bilinear2d": 2,
    "upsample_bicubic2d": 2,
    "upsample_linear1d": 1,
    "upsample_trilinear3d": 3,
    # exported graphs: interpolate(mode="nearest-exact"). The antialiased resizes (_upsample_*_aa) are left
    # unknown: in NaFlexViT they are what keeps an exported graph's literal head reshape of the residual
    # width from being pruned (its size is read from x.shape, which an exported graph does not show)
    "_upsample_nearest_exact1d": 1,
    "_upsample_nearest_exact2d": 2,
    "_upsample_nearest_exact3d": 3,
}


def spatial(n_spatial: int | None) -> Callable[[OpContext], Any]:
    """The handler of an op over ``n_spatial`` trailing dims: channels on those dims freeze."""

    def handler(ctx: OpContext) -> Any:
        x = ctx.arg(0, "input")
        lab = ctx.larg(0, "input") or {}
        n = n_spatial if n_spatial is not None else max(x.dim() - 2, 1)
        out = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
        result: Labels = {}
        for d, arr in lab.items():
            if d < x.dim() - n and out.dim() == x.dim() and out.shape[d] == x.shape[d]:
                result[d] = arr
            else:
                ctx.table.freeze(arr, f"{ctx.where}: channels on a spatial dim")
        if isinstance(ctx.out, (tuple, list)):  # max_pool with return_indices
            return [result, dict(result)] + [{} for _ in ctx.out[2:]]
        return result

    return handler


def _dims_arg(ctx: OpContext, position: int, name: str, ndim: int) -> list[int] | None:
    """The dims of a flip/roll as non-negative ints (``x.flip(1, 2)`` passes them one by one)."""
    if ctx.node.op == "call_method" and ctx.op_name == "flip" and len(ctx.args) > 2:
        dims = ctx.args[1:]
    else:
        dims = ctx.arg(position, name)
    if dims is None:
        return None
    return [d % ndim for d in ([dims] if isinstance(dims, int) else dims)]


@handles_ops("flip", "roll")
def flip_or_roll(ctx: OpContext) -> Labels:
    """``flip``: channel dims it reverses carry reversed labels. ``roll``: channel dims it shifts freeze."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    is_flip = ctx.op_name == "flip"
    dims = _dims_arg(ctx, 1 if is_flip else 2, "dims", x.dim())
    out: Labels = {}
    for d, arr in lab.items():
        if dims is not None and d not in dims:
            out[d] = arr
        elif is_flip:
            out[d] = arr[::-1].copy()
        else:
            ctx.table.freeze(arr, f"{ctx.where}: roll along a channel dim")
    return out


def _pooling_module(ctx: OpContext, m: nn.Module) -> Any:
    digits = re.findall(r"(\d)d$", type(m).__name__)
    return spatial(int(digits[0]) if digits else None)(ctx)


POOLING_MODULES: tuple[type, ...] = tuple(
    c for c in module_classes_in(pooling) if "Unpool" not in c.__name__
) + (nn.Upsample,)

for _name, _n in SPATIAL.items():
    register_op_handler(_name, spatial(_n))
for _cls in POOLING_MODULES:
    register_module_handler(_cls, _pooling_module)
