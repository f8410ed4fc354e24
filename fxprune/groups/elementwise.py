"""Elementwise ops (with broadcasting) and ops that keep every channel where it is (activations, casts)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn.modules import activation, dropout

from .context import OpContext, structure_like
from .labels import Labels, broadcast_labels
from .registry import module_classes_in, register_module_handler, register_op_handler
from .sizes import merge

__all__ = [
    "ELEMENTWISE",
    "PASSTHROUGH",
    "PASSTHROUGH_MODULES",
    "elementwise",
    "passthrough",
    "tensor_operands",
]

ELEMENTWISE = (
    "add sub rsub mul truediv div floordiv floor_divide true_divide maximum minimum where pow remainder fmod "
    "mod and or xor eq ne lt le gt ge masked_fill addcmul addcdiv lerp atan2 hypot copysign clamp clip "
    "clamp_min clamp_max neg"
).split()

PASSTHROUGH = (
    "relu relu6 silu gelu sigmoid tanh hardswish hardsigmoid hardtanh leaky_relu elu selu celu mish softplus "
    "softsign tanhshrink logsigmoid threshold glu_ dropout dropout1d dropout2d dropout3d alpha_dropout "
    "feature_alpha_dropout native_dropout contiguous clone detach float half double bfloat16 to type type_as "
    "abs exp log sqrt rsqrt sin cos erf reciprocal square sign floor ceil round trunc frac _to_copy alias "
    "lift_fresh_copy requires_grad cpu cuda stochastic_depth hardshrink softshrink silu_ log1p expm1 "
    "sigmoid_ bitwise_not logical_not nan_to_num positive"
).split()


def tensor_operands(ctx: OpContext) -> list[tuple[tuple[int, ...], Labels | None]]:
    """(shape, labels) of every tensor argument, positional then keyword."""
    pairs = list(zip(ctx.args, ctx.largs)) + [(ctx.kwargs[k], ctx.lkwargs.get(k)) for k in ctx.kwargs]
    return [(tuple(v.shape), lab) for v, lab in pairs if isinstance(v, torch.Tensor)]


def elementwise(ctx: OpContext) -> Labels:
    """Elementwise op with broadcasting over any number of tensor operands."""
    if not isinstance(ctx.out, torch.Tensor):
        if isinstance(ctx.out, (int, float)):
            return merge(*ctx.largs, *ctx.lkwargs.values())
        return ctx.unsupported_op("elementwise op with a non-tensor result")
    return broadcast_labels(ctx.table, tensor_operands(ctx), ctx.out_shape, ctx.where)


def passthrough(ctx: OpContext) -> Any:
    """Ops that keep every channel where it is (activations, dropout, dtype casts, clone)."""
    lab = ctx.larg(0, "input")
    if isinstance(ctx.out, torch.Tensor) and isinstance(ctx.arg(0, "input"), torch.Tensor):
        if tuple(ctx.arg(0, "input").shape) == ctx.out_shape:
            return dict(lab or {})
        return ctx.unsupported_op("shape changed by an op expected to keep it")
    if not isinstance(ctx.out, torch.Tensor):
        return structure_like(ctx.out)
    return elementwise(ctx)


def _passthrough_module(ctx: OpContext, m: nn.Module) -> Any:
    return passthrough(ctx)


_NOT_PASSTHROUGH = (
    activation.MultiheadAttention,
    activation.Softmax,
    activation.Softmin,
    activation.LogSoftmax,
    activation.Softmax2d,
    activation.GLU,
    activation.PReLU,
)
PASSTHROUGH_MODULES: tuple[type, ...] = (
    (nn.Identity,)
    + tuple(c for c in module_classes_in(activation) if c not in _NOT_PASSTHROUGH)
    + tuple(c for c in vars(dropout).values() if isinstance(c, type) and issubclass(c, dropout._DropoutNd))
)

for _name in ELEMENTWISE:
    register_op_handler(_name, elementwise)
for _name in PASSTHROUGH:
    register_op_handler(_name, passthrough)
for _cls in PASSTHROUGH_MODULES:
    register_module_handler(_cls, _passthrough_module)
