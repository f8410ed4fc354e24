"""Reshapes and dim reorders: view/reshape, flatten/unflatten, permute/transpose/movedim, expand."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from torch import nn

from .attention import head_size_fixed
from .attr_constants import find_attribute, find_sequence
from .attr_expressions import EXPRESSION, find_expression
from .channel_constants import find_constant
from .context import OpContext
from .head_choice import note_head_size, whole_heads_everywhere, whole_heads_forced
from .labels import Labels, permute_labels, reshape_labels
from .permutation import finish_shuffle_view, start_shuffle_view
from .registry import handles_modules, handles_ops
from .sdpa_scale import note_shapes
from .sizes import check_size_sources, sourceless_constants, view_size_args
from .view_sources import SizeSource, freeze_runtime_literals, view_attributes, view_producer

__all__ = ["expand", "movedim", "permute", "reshape", "reshape_free", "transpose", "unflatten"]


def _shape_args(ctx: OpContext) -> tuple[list, list[bool] | None]:
    """The target shape of a view/reshape and, per dim, whether it is computed at run time."""
    node_args = view_size_args(ctx.node)
    adaptive = [not isinstance(a, int) or a == -1 for a in node_args]
    if len(adaptive) != ctx.out.dim():
        return list(node_args), None
    return list(node_args), adaptive


def _view_module(ctx: OpContext) -> nn.Module | None:
    if ctx.model is None or ctx.graph_is_export:
        return None
    try:
        return ctx.model.get_submodule(ctx.module_name)
    except AttributeError:
        return None


def _constant_sizes(
    ctx: OpContext, sizes: list, adaptive: list[bool], sources: list[SizeSource] | None
) -> tuple[dict[int, tuple[str, str]], dict[int, dict[str, int]]]:
    """Output dims whose constant size is a channel count attribute, and those whose size is a sum of
    attributes (:mod:`.attr_expressions`); both count as adaptive from now.

    A registered attribute counts whatever its value; one read in forward only when it equals the whole
    width of a channel dim of the input (a head count is a factor of a width, not a width). A sum of
    attributes counts when it divides such a width (the per-head width of a ``qkv`` view). ``sources``
    (:func:`.view_sources.view_attributes`) says which attribute, if any, wrote each size: a literal
    equal to an attribute's value is not taken for it.
    """
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    widths = {x.shape[d] for d in lab} | _merged_widths(tuple(x.shape), ctx.out_shape, lab)
    known, sums = {}, {}
    whole = find_sequence(ctx, sizes) if all(type(v) is int for v in sizes) else None  # view(self.shape)
    for j, (size, free) in enumerate(zip(sizes, adaptive)):
        kind = sources[j].kind if sources is not None else None
        if free or type(size) is not int or kind == "literal":
            continue
        found = whole[j] if whole is not None and size in widths else None
        if kind in (None, "attr") and found is None:
            found = find_constant(ctx.model, ctx.module_name, size)
            if found is None and size in widths:
                found = find_attribute(ctx, size) or _named_attribute(ctx, sources, j, size)
        if found is not None and kind == "attr" and found[1] != sources[j].name:
            found = None
        if found is not None:
            known[j] = found
            adaptive[j] = True
        elif size > 1 and any(w % size == 0 for w in widths):
            coefs = find_expression(ctx, size)
            if coefs is not None:
                sums[j] = coefs
                adaptive[j] = True
    return known, sums


def _named_attribute(ctx: OpContext, sources: list[SizeSource] | None, j: int, size: int):
    """``(module, NAME)`` when the source writes size ``j`` as ``self.NAME`` of the view's module and it
    holds ``size`` (another attribute of the same value, ``head_dim == dim_out`` with one head, made the
    value alone ambiguous)."""
    m = _view_module(ctx)
    name = sources[j].name if sources is not None and sources[j].kind == "attr" else None
    if m is None or name is None or getattr(m, name, None) != size or type(getattr(m, name)) is not int:
        return None
    return ctx.module_name, name


def _count_beside_attribute_size(
    ctx: OpContext, sizes: list, adaptive: list[bool], written: set[int]
) -> None:
    """``view(B, -1, 3 * self.dim, N)`` on a channel dim: the size written from attributes follows the
    channels (the attributes are rewritten after slimming), so the ``-1`` beside it in the same split is
    a count of pieces (heads) that stays."""
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    for d in lab:
        run = _split_run(tuple(x.shape), ctx.out_shape, d)
        if any(j in written for j in run):
            for j in run:
                if sizes[j] == -1 and ctx.out_shape[j] > 1:
                    adaptive[j] = False


def _merged_widths(in_shape: tuple[int, ...], out_shape: tuple[int, ...], lab: Labels) -> set[int]:
    """Sizes of the output dims that merge a channel dim with the dims beside it: ``(B, heads, d, N)`` viewed
    as ``(B, self.dh, H, W)`` (EfficientFormerV2), ``(B, N, heads, d)`` as ``(B, N, self.val_attn_dim)``
    (LeViT). Such a size is a width too: an attribute equal to it follows the merged channels."""
    start = {p: k for k, p in enumerate(np.cumprod((1, *in_shape)).tolist())}
    bounds = np.cumprod((1, *out_shape)).tolist()
    found = set()
    for j in range(len(out_shape)):
        a, b = start.get(bounds[j]), start.get(bounds[j + 1])
        if a is not None and b is not None and b - a > 1 and any(a <= d < b for d in lab):
            found.add(out_shape[j])
    return found


def _prefer_heads(
    ctx: OpContext, sizes: list, adaptive: list[bool], sources: list[SizeSource] | None
) -> tuple[dict[int, tuple[str, str]], int | None]:
    """Follow whole heads instead of the head size where the head size cannot change.

    A view with a head count written ``self.NAME`` and a head size written ``-1`` or computed
    (``C // self.num_heads``) follows the head size by default. Where the head size must keep its width
    (:func:`.attention.head_size_fixed`: ``F.scaled_dot_product_attention`` without ``scale=`` divides
    by its square root; cross-covariance attention softmaxes over it), the head count is followed
    instead (recorded as a channel constant, written after slimming) and the head size kept; so it is
    where the head size froze on an earlier propagation (:func:`.head_choice.whole_heads_forced`).
    Returns the head count followed, and the head size dim where that is followed instead of heads.
    """
    if sources is None:
        return {}, None
    heads = [j for j, s in enumerate(sources) if s.kind == "attr" and type(sizes[j]) is int and sizes[j] > 1]
    head_size = [j for j, s in enumerate(sources) if adaptive[j] and (sizes[j] == -1 or s.kind == "divided")]
    if len(heads) != 1 or len(head_size) != 1 or head_size[0] < heads[0]:
        return {}, None
    width_tied = sources[head_size[0]].kind == "divided" and whole_heads_everywhere(ctx.node.graph, ctx.model)
    fixed = head_size_fixed(ctx.node, head_size[0], len(sizes)) or whole_heads_forced(ctx.node)
    if not width_tied and not fixed:
        return {}, head_size[0]
    adaptive[head_size[0]] = False
    adaptive[heads[0]] = True
    return {heads[0]: (ctx.module_name, sources[heads[0]].name)}, None


def _head_pair(
    ctx: OpContext, sizes: list, adaptive: list[bool], sources: list[SizeSource] | None, known: dict
) -> int | None:
    """A view written with two attributes where it splits a channel dim, ``(..., self.num_heads,
    self.head_dim)``, and no other size there that follows the channels: the second (the head size)
    follows them, unless it must keep its width (:func:`.attention.head_size_fixed`), then the first
    (whole heads). The attribute followed is recorded in ``known`` (a channel constant, written after
    slimming); a registered head count (found first, and the only one an exported graph can use) gives
    way to the head size. Whole heads are followed too where the head size froze on an earlier
    propagation (:func:`.head_choice.whole_heads_forced`). Returns the head size dim when that is
    followed where whole heads could be."""
    x, lab = ctx.arg(0, "input"), ctx.larg(0, "input") or {}
    if sources is None:
        return None
    runs = [_split_run(tuple(x.shape), ctx.out_shape, d) for d in lab]
    runs = [r for r in runs if sum(ctx.out_shape[j] > 1 for j in r) > 1]  # a channel dim split
    if len(runs) != 1:
        return None
    pair = [j for j in runs[0] if sources[j].kind == "attr"]
    if len(pair) != 2 or sizes[pair[1]] < 2 or any(adaptive[j] for j in runs[0] if j not in known):
        return None
    fixed = head_size_fixed(ctx.node, pair[1], len(sizes)) or whole_heads_forced(ctx.node)
    j = pair[0] if fixed else pair[1]
    if sizes[j] < 2:
        return None
    for k in pair:
        if k != j and k in known:  # a registered head count gives way
            del known[k]
            adaptive[k] = False
    adaptive[j] = True
    known[j] = (ctx.module_name, sources[j].name)
    return j if j == pair[1] and sizes[pair[0]] > 1 else None


def _head_size_attribute(ctx: OpContext, sources: list[SizeSource] | None, j: int) -> tuple[str, str] | None:
    """``(module, NAME)`` when size ``j`` of the view is written ``self.NAME``."""
    if sources is None or sources[j].kind != "attr":
        return None
    return ctx.module_name, sources[j].name


def _split_run(in_shape: tuple[int, ...], out_shape: tuple[int, ...], d: int) -> list[int]:
    """The output dims a view splits input dim ``d`` into (empty when its bounds do not line up)."""
    before, upto = math.prod(in_shape[:d]), math.prod(in_shape[: d + 1])
    run, prod = [], 1
    for j, size in enumerate(out_shape):
        if prod >= before and prod * size <= upto:
            run.append(j)
        prod *= size
    return run if math.prod(out_shape[j] for j in run) == in_shape[d] else []


@handles_ops("view", "reshape", "_unsafe_view")
def reshape(ctx: OpContext) -> Labels:
    """``view``/``reshape`` with sizes that are constants, computed from ``x.shape``, or -1.

    The views opening and closing a channel shuffle follow it as a permutation (:mod:`.permutation`).
    """
    note_shapes(ctx)
    shuffled = finish_shuffle_view(ctx) if not ctx.larg(0, "input") else start_shuffle_view(ctx)
    if shuffled is not None:
        return shuffled
    x = ctx.arg(0, "input")
    full = ctx.larg(0, "input") or {}
    lab = _without_frozen_dims(ctx, full)
    sizes, adaptive = _shape_args(ctx)
    known, sums, head_size, sources = {}, {}, None, None
    if adaptive is not None and lab:
        sources = view_attributes(_view_module(ctx), sizes, view_producer(ctx.node, ctx.module_name))
        sourceless_constants(ctx, adaptive)
        known, sums = _constant_sizes(ctx, sizes, adaptive, sources)
        _count_beside_attribute_size(ctx, sizes, adaptive, set(known) | set(sums))
        heads, head_size = _prefer_heads(ctx, sizes, adaptive, sources)
        known.update(heads)
        pair_size = _head_pair(ctx, sizes, adaptive, sources, known)
        head_size = pair_size if pair_size is not None else head_size
    out = reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, adaptive, ctx.where) if lab else {}
    if head_size is not None and head_size in out:
        # whole heads next time, should the head size freeze
        note_head_size(ctx.node, ctx.table, out[head_size], _head_size_attribute(ctx, sources, head_size))
    for j, (module, attr) in known.items():
        if j in out:
            ctx.constants.append((module, attr, out[j]))
    for j, coefs in sums.items():  # checked against the attributes' pieces after propagation
        if j in out:
            ctx.constraints.append((EXPRESSION, (out[j], ctx.module_name, coefs, ctx.node.name), ctx.where))
    check_size_sources(ctx, full, out)
    freeze_runtime_literals(ctx, sizes, out)
    return out


def _without_frozen_dims(ctx: OpContext, lab: Labels) -> Labels:
    """With several channel dims, drop those whose channels are all frozen already: their size never
    changes, so merging them with another channel dim (talking heads' mixed head dim next to the head
    size) does not need to freeze that one too."""
    if len(lab) < 2:
        return lab
    frozen = ctx.table.frozen
    kept = {d: a for d, a in lab.items() if not all(int(r) in frozen for r in np.unique(ctx.table.roots(a)))}
    return kept or lab


@handles_ops("flatten", "squeeze", "unsqueeze", "view_as", "reshape_as")
def reshape_free(ctx: OpContext) -> Labels:
    """Reshapes whose sizes always follow the input (flatten, squeeze, unsqueeze, view_as)."""
    note_shapes(ctx)
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    if not lab:
        shuffled = finish_shuffle_view(ctx) if ctx.op_name == "flatten" else None
        return shuffled if shuffled is not None else {}
    return reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, None, ctx.where)


@handles_modules(nn.Flatten)
def flatten_module(ctx: OpContext, m: nn.Module) -> Labels:
    """``nn.Flatten``: its sizes follow the input."""
    return reshape_free(ctx)


def _unflatten_labels(ctx: OpContext, dim: int, sizes: Any, adaptive_size: Any) -> Labels:
    """Labels after splitting ``dim`` into ``sizes``; ``adaptive_size(s)``: size s follows x."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    if not lab:
        return {}
    dim = dim + x.dim() if dim < 0 else dim
    adaptive = [True] * ctx.out.dim()
    for k, s in enumerate(sizes):
        adaptive[dim + k] = adaptive_size(s)
    return reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, adaptive, ctx.where)


@handles_ops("unflatten")
def unflatten(ctx: OpContext) -> Labels:
    """``x.unflatten(dim, sizes)``: constant sizes freeze a channel dim, computed ones or -1 follow it."""
    note_shapes(ctx)
    if not ctx.larg(0, "input"):
        return {}
    sizes = ctx.node.args[2] if len(ctx.node.args) > 2 else ctx.node.kwargs.get("sizes")
    return _unflatten_labels(ctx, ctx.arg(1, "dim"), sizes, lambda s: not isinstance(s, int) or s == -1)


@handles_modules(nn.Unflatten)
def unflatten_module(ctx: OpContext, m: nn.Module) -> Labels:
    """``nn.Unflatten``: sizes come from the module (constants unless -1)."""
    return _unflatten_labels(ctx, m.dim, m.unflattened_size, lambda s: s == -1)


@handles_ops("permute")
def permute(ctx: OpContext) -> Labels:
    note_shapes(ctx)
    lab = ctx.larg(0, "input") or {}
    nd = ctx.arg(0, "input").dim()
    if ctx.node.op == "call_method" and not isinstance(
        ctx.args[1] if len(ctx.args) > 1 else None, (list, tuple)
    ):
        perm = list(ctx.args[1:])
    else:
        perm = list(ctx.arg(1, "dims"))
    return permute_labels(lab, [p + nd if p < 0 else p for p in perm])


@handles_ops("transpose", "swapaxes", "swapdims", "t")
def transpose(ctx: OpContext) -> Labels:
    note_shapes(ctx)
    lab = ctx.larg(0, "input") or {}
    nd = ctx.arg(0, "input").dim()
    if ctx.op_name in ("t", "numpy_T") or len(ctx.args) < 3 and "dim0" not in ctx.kwargs:
        d0, d1 = (0, 1) if nd == 2 else (nd - 2, nd - 1)
    else:
        d0, d1 = ctx.arg(1, "dim0"), ctx.arg(2, "dim1")
    d0, d1 = d0 % nd, d1 % nd
    perm = list(range(nd))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return permute_labels(lab, perm)


@handles_ops("movedim", "moveaxis")
def movedim(ctx: OpContext) -> Labels:
    lab = ctx.larg(0, "input") or {}
    nd = ctx.arg(0, "input").dim()
    src, dst = ctx.arg(1, "source"), ctx.arg(2, "destination")
    src = [src] if isinstance(src, int) else list(src)
    dst = [dst] if isinstance(dst, int) else list(dst)
    src, dst = [s % nd for s in src], [d % nd for d in dst]
    rest = [d for d in range(nd) if d not in src]
    perm: list[int | None] = [None] * nd
    for s, d in zip(src, dst):
        perm[d] = s
    it = iter(rest)
    perm = [p if p is not None else next(it) for p in perm]
    return permute_labels(lab, perm)


@handles_ops("expand", "expand_as", "expand_copy")
def expand(ctx: OpContext) -> Labels:
    """``expand``: channel dims keep their labels where the size stays; broadcast ones freeze.

    A channel dim whose size is written as a constant (``x.expand(n, self.width, h, w)`` in a traced
    graph) freezes too: the constant would not follow pruning. (Exported graphs write every size as a
    constant; there only broadcast dims freeze.)
    """
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    off = ctx.out.dim() - x.dim()
    sizes, adaptive = _shape_args(ctx) if ctx.op_name == "expand" else ([], None)
    out = {}
    for d, a in lab.items():
        constant = adaptive is not None and not ctx.graph_is_export and not adaptive[d + off]
        if constant and ctx.out.shape[d + off] > 1:
            ctx.table.freeze(a, f"{ctx.where}: channel size written as a constant")
        elif ctx.out.shape[d + off] == x.shape[d]:
            out[d + off] = a
        else:
            ctx.table.freeze(a, ctx.where)
    return out
