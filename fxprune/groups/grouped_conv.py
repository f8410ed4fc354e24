"""Grouped convolutions pruned by whole groups where that keeps layer widths aligned.

A grouped conv (``groups`` = G, ``w`` channels per group, not depthwise) can lose channels in two ways:
the same positions in every group (the group count stays, each group narrows: an atom is G channels) or
whole groups (each group keeps its width, ``groups`` shrinks: an atom is ``w`` channels). Positions are
the default. With aligned widths (``round_to``, 8 by default) they fail when G has few factors of 2:
RegNet-Y-400MF has 13 groups of 8 channels, so a width stays a multiple of 8 only when all 8 positions
go or none does, and the whole block freezes. Removing whole groups keeps every width a multiple of
``w``, so an aligned step is ``lcm(w, 8) / w`` groups. Positions cut more FLOPs per channel (the
grouped conv loses inputs and outputs), so they stay the default where they align well.

:func:`prune_whole_groups` chooses whole groups for an ``nn.Conv*`` module (its ``forward`` reads
``self.groups``) whose input channels can be pruned, when at the default alignment positions would keep
more channels than whole groups where half are asked to go (:func:`whole_groups_are_finer`). It then
ties each group's input and output channels into one class and records ``groups`` and ``in_channels``
as channel constants, so slimming writes the new group count. :func:`channels_per_slot` lets alignment
count a grouped conv's input positions as the ``groups`` channels each stands for.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
from torch import nn

from .context import OpContext
from .slots import Block

__all__ = ["ALIGNMENT", "channels_per_slot", "prune_whole_groups", "shaped_for", "whole_groups_are_finer"]

ALIGNMENT = 8
"""Channel multiple the choice is made for unless told (:func:`shaped_for`): the planners' default
``round_to`` (``fxprune.plan.DEFAULT_ROUND_TO``)."""

_alignment: ContextVar[int] = ContextVar("fxprune_grouped_conv_alignment", default=ALIGNMENT)


@contextmanager
def shaped_for(round_to: int | None) -> Iterator[None]:
    """Grouped convs met inside the block choose positions or whole groups for ``round_to`` (None: the
    default :data:`ALIGNMENT`; 1 keeps positions everywhere)."""
    token = _alignment.set(ALIGNMENT if round_to is None else max(int(round_to), 1))
    try:
        yield
    finally:
        _alignment.reset(token)


def _aligned_step(*widths: int, alignment: int) -> int:
    """Fewest atoms (each ``width`` channels of one layer) that keep every layer's width aligned."""
    return math.lcm(*(alignment // math.gcd(alignment, w) for w in widths))


def _kept(step: float, keep: float) -> float:
    """The kept fraction when ``keep`` is asked for and kept fractions are multiples of ``step``."""
    return min(1.0, math.ceil(keep / step - 1e-9) * step)


def whole_groups_are_finer(groups: int, cin_g: int, cout_g: int, alignment: int = ALIGNMENT) -> bool:
    """True when, with aligned widths, removing whole groups keeps fewer channels than removing positions
    where half of them are asked to go.

    Kept fractions step by ``alignment / gcd(alignment, groups)`` of ``min(cin_g, cout_g)`` positions,
    or by ``lcm`` of ``alignment / gcd(alignment, w)`` over both widths of ``groups`` whole groups. 13 groups
    of 8: positions keep all 8, whole groups 7 of 13. Positions win ties: they cut the grouped conv's own
    cost twice (its inputs and outputs), whole groups once.
    """
    if groups <= 1 or groups % alignment == 0:
        return False
    positions = _aligned_step(groups, alignment=alignment) / min(cin_g, cout_g)
    whole = _aligned_step(cin_g, cout_g, alignment=alignment) / groups
    return _kept(whole, 0.5) < _kept(positions, 0.5) - 1e-9


def _plain_conv(root: nn.Module | None, module: str) -> nn.Module | None:
    """Submodule ``module`` of ``root`` if it is a (not transposed) convolution, else None."""
    if root is None:
        return None
    try:
        m = root.get_submodule(module)
    except AttributeError:
        return None
    return m if isinstance(m, nn.modules.conv._ConvNd) and not m.transposed else None


def _conv_module(ctx: OpContext, module: str, groups: int) -> nn.Module | None:
    m = _plain_conv(ctx.model if ctx.model is not None else ctx.root, module)
    return m if m is not None and m.groups == groups else None


def prune_whole_groups(
    ctx: OpContext, x: np.ndarray | None, out: np.ndarray, module: str, groups: int, cin_g: int
) -> bool:
    """Tie a grouped conv's channels group by group (see the module doc); False, with nothing done, when
    positions are kept instead."""
    cout_g = len(out) // groups
    if x is None or not whole_groups_are_finer(groups, cin_g, cout_g, _alignment.get()):
        return False
    if _conv_module(ctx, module, groups) is None:
        return False
    per_group, x_groups = out.reshape(groups, cout_g), x.reshape(groups, cin_g)
    ctx.table.union(per_group[:, :1], per_group)
    ctx.table.union(x_groups[:, :1], x_groups)
    ctx.table.union(x_groups[:, :1], per_group[:, :1])
    ctx.constants.append((module, "groups", per_group[:, 0].copy()))
    ctx.constants.append((module, "in_channels", x))
    return True


def channels_per_slot(model: nn.Module | None, block: Block) -> int:
    """Channels of its layer that one slot of ``block`` stands for: ``groups`` for a grouped conv's weight
    dim 1 (one input position of every group), else 1. Alignment counts the layer's ``in_channels``."""
    if len(block.members) != 1 or block.members[0] != (f"{block.module}.weight", 1):
        return 1
    m = _plain_conv(model, block.module)
    return m.groups if m is not None else 1


def sets_alignment(model: nn.Module | None, block: Block) -> bool:
    """Whether ``block``'s layer width is kept a multiple of ``round_to``: False for a depthwise conv (one
    channel per group), whose cost grows only linearly with its width and which runtimes run at any width,
    so the narrower slice of a group it may see (a per-head or per-kernel split) does not set the group's
    chunk."""
    m = _plain_conv(model, block.module)
    return m is None or not (m.groups > 1 and m.groups == m.in_channels)
