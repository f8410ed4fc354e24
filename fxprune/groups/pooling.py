"""Ops over the trailing spatial dims (pooling, interpolation, flip, roll): the leading dims keep channels."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from torch import nn
from torch.nn.modules import pooling

from .context import OpContext
from .labels import Labels
from .registry import module_classes_in, register_module_handler, register_op_handler

__all__ = ["POOLING_MODULES", "SPATIAL", "spatial"]

# op name -> number of trailing spatial dims (None: every dim after batch and channels)
SPATIAL: dict[str, int | None] = {
    **{
        f"{kind}{n}d": n
        for kind in ("max_pool", "avg_pool", "adaptive_avg_pool", "adaptive_max_pool", "lp_pool")
        for n in (1, 2, 3)
    },
    "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3,
    "adaptive_max_pool2d_with_indices": 2,
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
    "roll": None,
    "flip": None,
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
