"""Which handler runs for which op or layer, and how users add their own."""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn.modules import activation, dropout, pooling

from . import attention, layers, ops
from .context import OpContext

Handler = Callable[[OpContext], Any]
ModuleHandler = Callable[[OpContext, nn.Module], Any]

__all__ = ["function_handler", "module_handler", "register_module_handler", "register_op_handler"]

_OP_HANDLERS: dict[str, Handler] = {}
_MODULE_HANDLERS: dict[type, ModuleHandler] = {}


def register_op_handler(name: str, handler: Handler) -> None:
    """Register ``handler`` for functions/methods/aten ops whose normalised name is ``name``."""
    _OP_HANDLERS[name] = handler


def register_module_handler(cls: type, handler: ModuleHandler) -> None:
    """Register ``handler(ctx, module)`` for leaf modules of type ``cls`` (and subclasses)."""
    _MODULE_HANDLERS[cls] = handler


# ---------------------------------------------------------------- functional forms of parametric layers
def _param(ctx: OpContext, i: int, name: str) -> tuple[str, str] | None:
    """(owner module, attribute) of a parameter argument given by a get_attr node, else None."""
    node_arg = ctx.node.args[i] if i < len(ctx.node.args) else ctx.node.kwargs.get(name)
    if isinstance(node_arg, torch.fx.Node) and node_arg.op == "get_attr":
        owner, _, attr = node_arg.target.rpartition(".")
        return owner, attr
    return None


def _owner_names(ctx: OpContext, specs: list[tuple[int, str]]) -> tuple[str, list[str | None]] | None:
    """Owner and attribute names of several parameter arguments (all must share one owner)."""
    owner, names = None, []
    for i, name in specs:
        value = ctx.arg(i, name)
        if value is None:
            names.append(None)
            continue
        p = _param(ctx, i, name)
        if p is None:
            return None
        if owner is not None and p[0] != owner:
            return None
        owner = p[0]
        names.append(p[1])
    return (owner or "", names) if owner is not None else None


def _f_conv(transposed_default: bool, layout: str):
    def handler(ctx: OpContext) -> Any:
        if layout == "aten_convolution":
            transposed, groups = bool(ctx.arg(6, "transposed")), ctx.arg(8, "groups", 1)
        elif layout == "transpose":
            transposed, groups = True, ctx.arg(6, "groups", 1)
        else:
            transposed, groups = transposed_default, ctx.arg(6, "groups", 1)
        got = _owner_names(ctx, [(1, "weight"), (2, "bias")])
        if got is None:
            return ctx.unsupported_op("convolution with a computed weight")
        owner, (w, b) = got
        return layers.conv(ctx, ctx.larg(0, "input"), ctx.arg(1, "weight"), owner, (w, b), groups, transposed)

    return handler


def _f_linear(ctx: OpContext) -> Any:
    got = _owner_names(ctx, [(1, "weight"), (2, "bias")])
    if got is None:
        return ctx.unsupported_op("linear with a computed weight")
    owner, names = got
    return layers.linear(ctx, ctx.larg(0, "input"), ctx.arg(1, "weight"), owner, tuple(names))


def _f_batch_norm(order: str):
    # F.batch_norm(input, running_mean, running_var, weight, bias, ...)
    # aten.batch_norm(input, weight, bias, running_mean, running_var, ...)
    idx = {
        "F": [(3, "weight"), (4, "bias"), (1, "running_mean"), (2, "running_var")],
        "aten": [(1, "weight"), (2, "bias"), (3, "running_mean"), (4, "running_var")],
    }[order]

    def handler(ctx: OpContext) -> Any:
        got = _owner_names(ctx, idx)
        x = ctx.arg(0, "input")
        if got is None:
            return ctx.unsupported_op("batch norm with computed parameters")
        owner, names = got
        lab = layers.batch_norm(ctx, ctx.larg(0, "input"), owner, names, x.shape[1])
        return [lab] + [{} for _ in ctx.out[1:]] if isinstance(ctx.out, (tuple, list)) else lab

    return handler


def _f_layer_norm(ctx: OpContext) -> Any:
    got = _owner_names(ctx, [(2, "weight"), (3, "bias")])
    if got is None:
        got = ("", [None, None]) if ctx.arg(2, "weight") is None else None
    if got is None:
        return ctx.unsupported_op("layer norm with computed parameters")
    owner, names = got
    lab = layers.layer_norm(ctx, ctx.larg(0, "input"), owner, names, list(ctx.arg(1, "normalized_shape")))
    return [lab] + [{} for _ in ctx.out[1:]] if isinstance(ctx.out, (tuple, list)) else lab


def _f_group_norm(ctx: OpContext) -> Any:
    got = _owner_names(ctx, [(2, "weight"), (3, "bias")])
    if got is None:
        got = ("", [None, None]) if ctx.arg(2, "weight") is None else None
    if got is None:
        return ctx.unsupported_op("group norm with computed parameters")
    owner, names = got
    x = ctx.arg(0, "input")
    return layers.group_norm(ctx, ctx.larg(0, "input"), owner, names, ctx.arg(1, "num_groups"), x.shape[1])


def _f_embedding(weight_pos: int):
    def handler(ctx: OpContext) -> Any:
        p = _param(ctx, weight_pos, "weight")
        if p is None:
            return ctx.unsupported_op("embedding with a computed table")
        return layers.embedding(ctx, ctx.arg(weight_pos, "weight"), p[0], p[1])

    return handler


for _name, _h in {
    "conv1d": _f_conv(False, "conv"),
    "conv2d": _f_conv(False, "conv"),
    "conv3d": _f_conv(False, "conv"),
    "conv_transpose1d": _f_conv(True, "transpose"),
    "conv_transpose2d": _f_conv(True, "transpose"),
    "conv_transpose3d": _f_conv(True, "transpose"),
    "convolution": _f_conv(False, "aten_convolution"),
    "linear": _f_linear,
    "batch_norm": None,
    "layer_norm": _f_layer_norm,
    "native_layer_norm": _f_layer_norm,
    "group_norm": _f_group_norm,
    "_native_batch_norm_legit_no_training": _f_batch_norm("aten"),
    "_native_batch_norm_legit": _f_batch_norm("aten"),
    "native_batch_norm": _f_batch_norm("aten"),
}.items():
    if _h is not None:
        _OP_HANDLERS[_name] = _h


def _batch_norm_any(ctx: OpContext) -> Any:
    order = "aten" if isinstance(ctx.node.target, torch._ops.OpOverload) else "F"
    return _f_batch_norm(order)(ctx)


def _embedding_any(ctx: OpContext) -> Any:
    return _f_embedding(0 if isinstance(ctx.node.target, torch._ops.OpOverload) else 1)(ctx)


_OP_HANDLERS["batch_norm"] = _batch_norm_any
_OP_HANDLERS["embedding"] = _embedding_any

# ---------------------------------------------------------------- parameter-free ops
for _name in ops.ELEMENTWISE:
    _OP_HANDLERS[_name] = ops.elementwise
for _name in ops.PASSTHROUGH:
    _OP_HANDLERS[_name] = ops.passthrough
for _name, _n in ops.SPATIAL.items():
    _OP_HANDLERS[_name] = ops.spatial(_n)
for _name, _keep in ops.REDUCTIONS.items():
    _OP_HANDLERS[_name] = ops.reduction(_keep)
_OP_HANDLERS.update(
    {
        "view": ops.reshape,
        "reshape": ops.reshape,
        "_unsafe_view": ops.reshape,
        "flatten": ops.reshape_free,
        "squeeze": ops.reshape_free,
        "unsqueeze": ops.reshape_free,
        "view_as": ops.reshape_free,
        "reshape_as": ops.reshape_free,
        "unflatten": ops.unflatten,
        "permute": ops.permute,
        "transpose": ops.transpose,
        "swapaxes": ops.transpose,
        "swapdims": ops.transpose,
        "t": ops.transpose,
        "movedim": ops.movedim,
        "moveaxis": ops.movedim,
        "expand": ops.expand,
        "expand_as": ops.expand,
        "expand_copy": ops.expand,
        "cat": ops.cat,
        "concat": ops.cat,
        "concatenate": ops.cat,
        "stack": ops.stack,
        "chunk": ops.split,
        "split": ops.split,
        "split_with_sizes": ops.split,
        "tensor_split": ops.split,
        "unbind": ops.unbind,
        "getitem": ops.getitem,
        "slice": ops.aten_slice,
        "select": ops.aten_select,
        "pad": ops.pad,
        "constant_pad_nd": ops.pad,
        "pixel_shuffle": ops.pixel_shuffle,
        "pixel_unshuffle": ops.pixel_unshuffle,
        "channel_shuffle": ops.channel_shuffle,
        "native_channel_shuffle": ops.channel_shuffle,
        "matmul": ops.matmul,
        "bmm": ops.matmul,
        "mm": ops.matmul,
        "scaled_dot_product_attention": ops.sdpa,
        "size": ops.size,
        "dim": ops.non_tensor,
        "numel": ops.non_tensor,
        "getattr": ops.size,
        "sym_size": ops.size,
        "_assert": ops.non_tensor,
        "_assert_tensor_metadata": ops.non_tensor,
        "sym_constrain_range_for_size": ops.non_tensor,
        "_assert_scalar": ops.non_tensor,
        "le_int": ops.non_tensor,
        "zeros_like": ops.non_tensor,
    }
)


def function_handler(name: str) -> Handler | None:
    """The handler of a normalised op name, if any."""
    return _OP_HANDLERS.get(name)


# ---------------------------------------------------------------- leaf modules
def _with_args(ctx: OpContext, *extra: Any) -> OpContext:
    return dataclasses.replace(ctx, args=(ctx.args[0], *extra), largs=(ctx.largs[0],), kwargs={}, lkwargs={})


def _m_conv(ctx: OpContext, m: nn.Module) -> Any:
    names = ("weight", "bias" if m.bias is not None else None)
    transposed = isinstance(m, nn.modules.conv._ConvTransposeNd)
    return layers.conv(ctx, ctx.larg(0), m.weight, ctx.module_name, names, m.groups, transposed)


def _m_linear(ctx: OpContext, m: nn.Module) -> Any:
    return layers.linear(
        ctx, ctx.larg(0), m.weight, ctx.module_name, ("weight", "bias" if m.bias is not None else None)
    )


def _m_batch_norm(ctx: OpContext, m: nn.Module) -> Any:
    names = layers.module_names(m, "weight", "bias", "running_mean", "running_var")
    return layers.batch_norm(ctx, ctx.larg(0), ctx.module_name, names, m.num_features)


def _m_layer_norm(ctx: OpContext, m: nn.Module) -> Any:
    names = layers.module_names(m, "weight", "bias")
    return layers.layer_norm(ctx, ctx.larg(0), ctx.module_name, names, list(m.normalized_shape))


def _m_group_norm(ctx: OpContext, m: nn.Module) -> Any:
    names = layers.module_names(m, "weight", "bias")
    return layers.group_norm(ctx, ctx.larg(0), ctx.module_name, names, m.num_groups, m.num_channels)


def _m_embedding(ctx: OpContext, m: nn.Module) -> Any:
    return layers.embedding(ctx, m.weight, ctx.module_name, "weight")


def _m_prelu(ctx: OpContext, m: nn.Module) -> Any:
    return layers.prelu(ctx, ctx.larg(0), ctx.module_name, "weight", m.weight)


def _m_spatial(ctx: OpContext, m: nn.Module) -> Any:
    digits = re.findall(r"(\d)d$", type(m).__name__)
    return ops.spatial(int(digits[0]) if digits else None)(ctx)


def _m_flatten(ctx: OpContext, m: nn.Module) -> Any:
    return ops.reshape_free(ctx)


def _m_softmax(ctx: OpContext, m: nn.Module) -> Any:
    dim = getattr(m, "dim", None)
    return ops.reduction(True)(_with_args(ctx, dim if dim is not None else 1))


_PASS_MODULES: tuple[type, ...] = (
    (nn.Identity,)
    + tuple(
        c
        for c in vars(activation).values()
        if isinstance(c, type)
        and issubclass(c, nn.Module)
        and c.__module__ == activation.__name__
        and c
        not in (
            activation.MultiheadAttention,
            activation.Softmax,
            activation.Softmin,
            activation.LogSoftmax,
            activation.Softmax2d,
            activation.GLU,
            activation.PReLU,
        )
    )
    + tuple(c for c in vars(dropout).values() if isinstance(c, type) and issubclass(c, dropout._DropoutNd))
)

_POOL_MODULES = tuple(
    c
    for c in vars(pooling).values()
    if isinstance(c, type)
    and issubclass(c, nn.Module)
    and c.__module__ == pooling.__name__
    and "Unpool" not in c.__name__
) + (nn.Upsample,)

_MODULE_HANDLERS.update(
    {
        nn.modules.conv._ConvNd: _m_conv,
        nn.Linear: _m_linear,
        nn.modules.batchnorm._NormBase: _m_batch_norm,
        nn.LayerNorm: _m_layer_norm,
        nn.GroupNorm: _m_group_norm,
        nn.Embedding: _m_embedding,
        nn.PReLU: _m_prelu,
        nn.MultiheadAttention: attention.multihead_attention,
        nn.Flatten: _m_flatten,
        nn.Softmax: _m_softmax,
        nn.LogSoftmax: _m_softmax,
        nn.PixelShuffle: lambda ctx, m: ops.pixel_shuffle(_with_args(ctx, m.upscale_factor)),
        nn.PixelUnshuffle: lambda ctx, m: ops.pixel_unshuffle(_with_args(ctx, m.downscale_factor)),
        nn.ChannelShuffle: lambda ctx, m: ops.channel_shuffle(_with_args(ctx, m.groups)),
        nn.Unflatten: lambda ctx, m: ops.reshape_labels_for_unflatten(ctx, m),
    }
)
for _c in _PASS_MODULES:
    _MODULE_HANDLERS[_c] = lambda ctx, m: ops.passthrough(ctx)
for _c in _POOL_MODULES:
    _MODULE_HANDLERS[_c] = _m_spatial


def module_handler(m: nn.Module) -> ModuleHandler | None:
    """The handler for a leaf module, looked up along its class hierarchy."""
    for cls in type(m).__mro__:
        h = _MODULE_HANDLERS.get(cls)
        if h is not None:
            return h
    return None


def unknown(ctx: OpContext) -> Any:
    """Ops without a handler: the channels they touch freeze (ops on sizes alone go unreported)."""
    return ctx.unsupported_op("op not understood by the channel analysis")
