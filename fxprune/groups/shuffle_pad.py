"""Ops that move channels between dims or add some: pixel (un)shuffle, channel shuffle, padding."""

from __future__ import annotations

import numpy as np
from torch import nn

from .context import OpContext
from .labels import Labels
from .permutation import shuffle_labels
from .registry import handles_modules, handles_ops

__all__ = ["channel_shuffle", "pad", "pixel_shuffle", "pixel_unshuffle"]


def _padded(ctx: OpContext, labels: np.ndarray, left: int, right: int) -> np.ndarray:
    """Channel labels with frozen slots for the zero channels padded on each side."""
    reason = f"{ctx.where}: zero channels from padding"
    return np.concatenate([ctx.table.freeze_new(left, reason), labels, ctx.table.freeze_new(right, reason)])


@handles_ops("pad", "constant_pad_nd")
def pad(ctx: OpContext) -> Labels:
    """Constant padding on a channel dim adds frozen channels; other modes or cropping freeze it."""
    return _pad_labels(ctx, list(ctx.arg(1, "pad")), ctx.arg(2, "mode", "constant"))


_PAD_MODULES = (
    nn.modules.padding._ConstantPadNd,
    nn.modules.padding._ReflectionPadNd,
    nn.modules.padding._ReplicationPadNd,
    nn.modules.padding._CircularPadNd,
)


@handles_modules(*_PAD_MODULES)
def pad_module(ctx: OpContext, m: nn.Module) -> Labels:
    """``nn.ZeroPad2d`` and the other padding layers: as ``F.pad`` with the layer's widths and mode."""
    mode = "constant" if isinstance(m, nn.modules.padding._ConstantPadNd) else "reflect"
    return _pad_labels(ctx, list(m.padding), mode)


def _pad_labels(ctx: OpContext, widths: list[int], mode: str) -> Labels:
    x = ctx.arg(0, "input")
    lab = dict(ctx.larg(0, "input") or {})
    for k in range(len(widths) // 2):
        d = x.dim() - 1 - k
        left, right = widths[2 * k], widths[2 * k + 1]
        if d not in lab or not (left or right):
            continue
        if mode != "constant" or left < 0 or right < 0:
            ctx.table.freeze(lab.pop(d), f"{ctx.where}: padding of channels")
        else:
            lab[d] = _padded(ctx, lab[d], left, right)
    return lab


@handles_ops("pixel_shuffle")
def pixel_shuffle(ctx: OpContext) -> Labels:
    """Each run of ``r*r`` channels becomes one channel: the run is removed together."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    r = ctx.arg(1, "upscale_factor")
    cdim = x.dim() - 3
    out = {d: a for d, a in lab.items() if d < cdim}
    if cdim in lab:
        grouped = lab[cdim].reshape(-1, r * r)
        ctx.table.union(grouped[:, :1], grouped)
        out[cdim] = grouped[:, 0].copy()
    for d in lab:
        if d > cdim:
            ctx.table.freeze(lab[d], ctx.where)
    return out


@handles_ops("pixel_unshuffle")
def pixel_unshuffle(ctx: OpContext) -> Labels:
    """Each channel becomes ``r*r`` channels carrying its label."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    r = ctx.arg(1, "downscale_factor")
    cdim = x.dim() - 3
    out = {d: a for d, a in lab.items() if d < cdim}
    if cdim in lab:
        out[cdim] = np.repeat(lab[cdim], r * r)
    return out


@handles_ops("channel_shuffle", "native_channel_shuffle")
def channel_shuffle(ctx: OpContext) -> Labels:
    """Channels interleave across ``groups``: followed as a permutation where the order can be followed
    downstream (:mod:`.permutation`), else a position is removed in every group at once."""
    lab = ctx.larg(0, "input") or {}
    g = ctx.arg(1, "groups")
    followed = shuffle_labels(ctx, g) if lab else None
    if followed is not None:
        return followed
    out = dict(lab)
    if 1 in lab:
        grouped = lab[1].reshape(g, -1)
        ctx.table.union(grouped[:1], grouped)
        out[1] = grouped.T.reshape(-1).copy()
    return out


@handles_modules(nn.PixelShuffle)
def pixel_shuffle_module(ctx: OpContext, m: nn.PixelShuffle) -> Labels:
    return pixel_shuffle(ctx.with_inputs(m.upscale_factor))


@handles_modules(nn.PixelUnshuffle)
def pixel_unshuffle_module(ctx: OpContext, m: nn.PixelUnshuffle) -> Labels:
    return pixel_unshuffle(ctx.with_inputs(m.downscale_factor))


@handles_modules(nn.ChannelShuffle)
def channel_shuffle_module(ctx: OpContext, m: nn.ChannelShuffle) -> Labels:
    return channel_shuffle(ctx.with_inputs(m.groups))
