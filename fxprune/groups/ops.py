"""Handlers for parameter-free ops: elementwise, shape, concat/split, pooling, reductions, matmul."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from .channel_constants import find_constant
from .context import OpContext, iter_labels, structure_like
from .labels import Labels, broadcast_labels, permute_labels, reshape_labels
from .sizes import IntInfo, SizeInfo, merge, size_of

__all__ = ["ELEMENTWISE", "PASSTHROUGH", "REDUCTIONS", "SPATIAL"]


def _tensor_operands(ctx: OpContext) -> list[tuple[tuple[int, ...], Labels | None]]:
    ops = []
    for v, lab in list(zip(ctx.args, ctx.largs)) + [(ctx.kwargs[k], ctx.lkwargs.get(k)) for k in ctx.kwargs]:
        if isinstance(v, torch.Tensor):
            ops.append((tuple(v.shape), lab))
    return ops


def elementwise(ctx: OpContext) -> Labels:
    """Elementwise op with broadcasting over any number of tensor operands."""
    if not isinstance(ctx.out, torch.Tensor):
        if isinstance(ctx.out, (int, float)):
            return merge(*ctx.largs, *ctx.lkwargs.values())
        return ctx.unsupported_op("elementwise op with a non-tensor result")
    return broadcast_labels(ctx.table, _tensor_operands(ctx), ctx.out_shape)


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


def spatial(n_spatial: int | None):
    """Ops over the trailing spatial dims (pooling, interpolation): leading dims keep their channels."""

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


def _dims_arg(ctx: OpContext, ndim: int) -> list[int] | None:
    dim = ctx.arg(1, "dim")
    if dim is None and ctx.node.op == "call_function" and len(ctx.args) > 1 and isinstance(ctx.args[1], list):
        dim = ctx.args[1]
    if dim is None:
        return None
    dims = [dim] if isinstance(dim, int) else list(dim)
    return [d + ndim if d < 0 else d for d in dims]


def reduction(keeps_shape: bool = False):
    """Reductions (mean, sum, amax, softmax...): reducing over a channel dim freezes it."""

    def handler(ctx: OpContext) -> Any:
        x = ctx.arg(0, "input")
        if not isinstance(x, torch.Tensor):
            return structure_like(ctx.out)
        lab = ctx.larg(0, "input") or {}
        dims = _dims_arg(ctx, x.dim())
        dims = list(range(x.dim())) if dims is None else dims
        for d in dims:
            if d in lab:
                ctx.table.freeze(lab[d], f"{ctx.where}: reduction over channels")
        kept = {d: a for d, a in lab.items() if d not in dims}
        out0 = ctx.out[0] if isinstance(ctx.out, (tuple, list)) else ctx.out
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


def _shape_args(ctx: OpContext) -> tuple[list, list[bool] | None]:
    """The target shape of a view/reshape and, per dim, whether it is computed at run time."""
    node_args = ctx.node.args[1:] if ctx.node.op == "call_method" else ctx.node.args[1:2]
    if ctx.node.op == "call_method" and len(node_args) == 1 and isinstance(node_args[0], (list, tuple)):
        node_args = node_args[0]
    elif ctx.node.op != "call_method" and node_args and isinstance(node_args[0], (list, tuple)):
        node_args = node_args[0]
    adaptive = [not isinstance(a, int) or a == -1 for a in node_args]
    if len(adaptive) != ctx.out.dim():
        return list(node_args), None
    return list(node_args), adaptive


def reshape(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    sizes, adaptive = _shape_args(ctx)
    known = {}
    if adaptive is not None and lab:
        for j, (size, free) in enumerate(zip(sizes, adaptive)):
            found = None if free else find_constant(ctx.model, ctx.module_name, size)
            if found is not None:
                known[j] = found
                adaptive[j] = True
    out = reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, adaptive, ctx.where) if lab else {}
    for j, (module, attr) in known.items():
        if j in out:
            ctx.constants.append((module, attr, out[j]))
    _check_size_sources(ctx, lab, out)
    return out


def _check_size_sources(ctx: OpContext, own: Labels, out: Labels) -> None:
    """Sizes read from another tensor's channel dim must follow this output's channels."""
    shape_labels = ctx.largs[1:] if ctx.node.op == "call_method" else ctx.largs[1:2]
    if len(shape_labels) == 1 and isinstance(shape_labels[0], (list, tuple)):
        shape_labels = shape_labels[0]
    own_roots = [set(ctx.table.roots(a).tolist()) for a in own.values()]
    for j, info in enumerate(shape_labels):
        if not isinstance(info, IntInfo):
            continue
        for src in info.sources:
            roots = set(ctx.table.roots(src).tolist())
            if any(roots == r for r in own_roots):
                continue  # read from the tensor being reshaped
            target = out.get(j)
            if target is not None and len(target) == len(src):
                ctx.table.union(src, target)
            else:
                ctx.table.freeze(src, f"{ctx.where}: size read from a channel dim of another tensor")
                if target is not None:
                    ctx.table.freeze(target, f"{ctx.where}: size read from a channel dim of another tensor")


def reshape_free(ctx: OpContext) -> Labels:
    """Reshapes whose sizes always follow the input (flatten, squeeze, unsqueeze, view_as)."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    if not lab:
        return {}
    return reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, None, ctx.where)


def unflatten(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    if not lab:
        return {}
    dim = ctx.arg(1, "dim")
    dim = dim + x.dim() if dim < 0 else dim
    sizes = ctx.node.args[2] if len(ctx.node.args) > 2 else ctx.node.kwargs.get("sizes")
    adaptive = [True] * ctx.out.dim()
    for k, s in enumerate(sizes):
        adaptive[dim + k] = not isinstance(s, int) or s == -1
    return reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, adaptive, ctx.where)


def reshape_labels_for_unflatten(ctx: OpContext, m: Any) -> Labels:
    """``nn.Unflatten``: sizes come from the module (constants unless -1)."""
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    if not lab:
        return {}
    dim = m.dim + x.dim() if m.dim < 0 else m.dim
    adaptive = [True] * ctx.out.dim()
    for k, s in enumerate(m.unflattened_size):
        adaptive[dim + k] = s == -1
    return reshape_labels(ctx.table, tuple(x.shape), lab, ctx.out_shape, adaptive, ctx.where)


def permute(ctx: OpContext) -> Labels:
    lab = ctx.larg(0, "input") or {}
    nd = ctx.arg(0, "input").dim()
    if ctx.node.op == "call_method" and not isinstance(
        ctx.args[1] if len(ctx.args) > 1 else None, (list, tuple)
    ):
        perm = list(ctx.args[1:])
    else:
        perm = list(ctx.arg(1, "dims"))
    return permute_labels(lab, [p + nd if p < 0 else p for p in perm])


def transpose(ctx: OpContext) -> Labels:
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


def expand(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    off = ctx.out.dim() - x.dim()
    out = {}
    for d, a in lab.items():
        if ctx.out.shape[d + off] == x.shape[d]:
            out[d + off] = a
        else:
            ctx.table.freeze(a, ctx.where)
    return out


def cat(ctx: OpContext) -> Labels:
    tensors = list(ctx.arg(0, "tensors"))
    labs = list(ctx.larg(0, "tensors") or [None] * len(tensors))
    nd = ctx.out.dim()
    dim = ctx.arg(1, "dim", 0)
    dim = dim + nd if dim < 0 else dim
    pieces, any_lab = [], False
    for lab in labs:
        a = (lab or {}).get(dim)
        any_lab |= a is not None
        pieces.append(a if a is not None else None)
    out: Labels = {}
    if any_lab:
        out[dim] = np.concatenate(
            [
                p
                if p is not None
                else ctx.table.freeze_new(t.shape[dim], f"{ctx.where}: concatenated constant")
                for p, t in zip(pieces, tensors)
            ]
        )
    others = [
        (tuple(t.shape), {d: a for d, a in (lab or {}).items() if d != dim}) for t, lab in zip(tensors, labs)
    ]
    shape = list(ctx.out_shape)
    shape[dim] = 1
    others = [(s[:dim] + (1,) + s[dim + 1 :], lab) for s, lab in others]
    out.update({d: a for d, a in broadcast_labels(ctx.table, others, shape).items() if d != dim})
    return out


def stack(ctx: OpContext) -> Labels:
    tensors = list(ctx.arg(0, "tensors"))
    labs = list(ctx.larg(0, "tensors") or [None] * len(tensors))
    nd = ctx.out.dim()
    dim = ctx.arg(1, "dim", 0)
    dim = dim + nd if dim < 0 else dim
    merged = broadcast_labels(
        ctx.table, [(tuple(t.shape), lab) for t, lab in zip(tensors, labs)], tuple(tensors[0].shape)
    )
    return {d + (1 if d >= dim else 0): a for d, a in merged.items()}


def split(ctx: OpContext) -> list:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    kind = ctx.op_name
    nd = x.dim()
    dim = ctx.arg(2, "dim", 0)
    dim = dim + nd if dim < 0 else dim
    sections = ctx.arg(1, "split_size_or_sections")
    if kind == "chunk":
        sections = ctx.arg(1, "chunks")
    if kind == "split_with_sizes":
        kind = "split"
    sizes = [int(o.shape[dim]) for o in ctx.out]
    others = {d: a for d, a in lab.items() if d != dim}
    parts = [dict(others) for _ in ctx.out]
    a = lab.get(dim)
    if a is not None:
        # chunk() recomputes its sizes from the width; in export graphs it appears as split(int)
        adaptive = kind == "chunk" or (
            ctx.graph_is_export and isinstance(sections, int) and len(set(sizes)) == 1
        )
        if adaptive:
            bounds = np.cumsum([0, *sizes])
            pieces = [a[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
            ctx.constraints.append(("equal_parts", pieces, ctx.where))
            for p, piece in zip(parts, pieces):
                p[dim] = piece
        else:
            ctx.table.freeze(a, f"{ctx.where}: split sizes written as constants")
    return parts


def unbind(ctx: OpContext) -> list:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    dim = ctx.arg(1, "dim", 0) % x.dim()
    if dim in lab:
        ctx.table.freeze(lab[dim], f"{ctx.where}: channels taken one by one")
    rest = {d - (1 if d > dim else 0): a for d, a in lab.items() if d != dim}
    return [dict(rest) for _ in ctx.out]


def _index_tensor(ctx: OpContext, x: torch.Tensor, lab: Labels, index: Any) -> Labels:
    if not isinstance(index, tuple):
        index = (index,)
    n_real = sum(1 for i in index if i is not None and i is not Ellipsis)
    out: Labels = {}
    d_in = d_out = 0
    for idx in index:
        if idx is Ellipsis:
            skip = x.dim() - n_real
            for _ in range(skip):
                if d_in in lab:
                    out[d_out] = lab[d_in]
                d_in += 1
                d_out += 1
        elif idx is None:
            d_out += 1
        elif isinstance(idx, int):
            if d_in in lab:
                ctx.table.freeze(lab[d_in], f"{ctx.where}: one channel taken by index")
            d_in += 1
        elif isinstance(idx, slice):
            if d_in in lab:
                full = idx == slice(None) or (
                    idx.start in (None, 0) and idx.stop is None and idx.step in (None, 1)
                )
                if full:
                    out[d_out] = lab[d_in]
                else:
                    ctx.table.freeze(lab[d_in], f"{ctx.where}: channel slice with constant bounds")
            d_in += 1
            d_out += 1
        else:
            if d_in in lab:
                ctx.table.freeze(lab[d_in], f"{ctx.where}: advanced indexing on channels")
            return ctx.unsupported_op("advanced indexing") if any(True for _ in iter_labels(lab)) else {}
    while d_in < x.dim():
        if d_in in lab:
            out[d_out] = lab[d_in]
        d_in += 1
        d_out += 1
    return out


def getitem(ctx: OpContext) -> Any:
    obj, index = ctx.args[0], ctx.args[1]
    lab = ctx.largs[0]
    if isinstance(lab, SizeInfo):
        picked = lab.dims[index]
        if isinstance(index, int):
            return IntInfo([picked] if picked is not None else [])
        return SizeInfo(list(picked))
    if isinstance(obj, torch.Tensor):
        return _index_tensor(ctx, obj, lab or {}, index)
    if isinstance(obj, (list, tuple)) and isinstance(lab, (list, tuple)):
        return lab[index]
    if isinstance(obj, dict) and isinstance(lab, dict):
        return lab.get(index)
    return structure_like(ctx.out)


def aten_slice(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    dim = ctx.arg(1, "dim", 0) % x.dim()
    start, end, step = ctx.arg(2, "start"), ctx.arg(3, "end"), ctx.arg(4, "step", 1)
    idx = [slice(None)] * x.dim()
    full = (start in (None, 0)) and (end is None or end >= x.shape[dim]) and step in (None, 1)
    idx[dim] = slice(None) if full else slice(start, end, step)
    return _index_tensor(ctx, x, ctx.larg(0) or {}, tuple(idx))


def aten_select(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    idx: list[Any] = [slice(None)] * x.dim()
    idx[ctx.arg(1, "dim") % x.dim()] = int(ctx.arg(2, "index"))
    return _index_tensor(ctx, x, ctx.larg(0) or {}, tuple(idx))


def pad(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    lab = dict(ctx.larg(0, "input") or {})
    widths = list(ctx.arg(1, "pad"))
    mode = ctx.arg(2, "mode", "constant")
    nd = x.dim()
    for k in range(len(widths) // 2):
        d = nd - 1 - k
        left, right = widths[2 * k], widths[2 * k + 1]
        if d in lab and (left or right):
            if mode != "constant" or left < 0 or right < 0:
                ctx.table.freeze(lab[d], f"{ctx.where}: padding of channels")
                del lab[d]
                continue
            lab[d] = np.concatenate(
                [
                    ctx.table.freeze_new(left, f"{ctx.where}: zero channels from padding"),
                    lab[d],
                    ctx.table.freeze_new(right, f"{ctx.where}: zero channels from padding"),
                ]
            )
    return lab


def pixel_shuffle(ctx: OpContext) -> Labels:
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


def pixel_unshuffle(ctx: OpContext) -> Labels:
    x = ctx.arg(0, "input")
    lab = ctx.larg(0, "input") or {}
    r = ctx.arg(1, "downscale_factor")
    cdim = x.dim() - 3
    out = {d: a for d, a in lab.items() if d < cdim}
    if cdim in lab:
        out[cdim] = np.repeat(lab[cdim], r * r)
    return out


def channel_shuffle(ctx: OpContext) -> Labels:
    lab = ctx.larg(0, "input") or {}
    g = ctx.arg(1, "groups")
    out = dict(lab)
    if 1 in lab:
        grouped = lab[1].reshape(g, -1)
        ctx.table.union(grouped[:1], grouped)
        out[1] = grouped.T.reshape(-1).copy()
    return out


def matmul(ctx: OpContext) -> Labels:
    a, b = ctx.arg(0, "input"), ctx.arg(1, "other")
    la, lb = ctx.larg(0) or {}, ctx.larg(1) or {}
    if a.dim() < 2 or b.dim() < 2:
        return ctx.unsupported_op("matmul with a vector")
    ka, kb = a.dim() - 1, b.dim() - 2
    xa, xb = la.get(ka), lb.get(kb)
    if xa is not None and xb is not None:
        ctx.table.union(xa, xb)
    elif xa is not None or xb is not None:
        ctx.table.freeze(xa if xa is not None else xb, f"{ctx.where}: contraction with a fixed operand")
    nd = ctx.out.dim()
    batch = broadcast_labels(
        ctx.table,
        [
            (tuple(a.shape[:-2]), {d: v for d, v in la.items() if d < a.dim() - 2}),
            (tuple(b.shape[:-2]), {d: v for d, v in lb.items() if d < b.dim() - 2}),
        ],
        ctx.out_shape[:-2],
    )
    out = dict(batch)
    if a.dim() - 2 in la:
        out[nd - 2] = la[a.dim() - 2]
    if b.dim() - 1 in lb:
        out[nd - 1] = lb[b.dim() - 1]
    return out


def sdpa(ctx: OpContext) -> Labels:
    q, k, v = ctx.arg(0, "query"), ctx.arg(1, "key"), ctx.arg(2, "value")
    lq, lk, lv = ctx.larg(0) or {}, ctx.larg(1) or {}, ctx.larg(2) or {}
    e_q, e_k = lq.get(q.dim() - 1), lk.get(k.dim() - 1)
    if e_q is not None and e_k is not None:
        ctx.table.union(e_q, e_k)
    elif e_q is not None or e_k is not None:
        ctx.table.freeze(e_q if e_q is not None else e_k, ctx.where)
    for lab, t in ((lk, k), (lv, v)):
        if t.dim() - 2 in lab:
            ctx.table.freeze(lab[t.dim() - 2], ctx.where)
    batch = broadcast_labels(
        ctx.table,
        [
            (tuple(t.shape[:-2]), {d: x for d, x in lab.items() if d < t.dim() - 2})
            for t, lab in ((q, lq), (k, lk), (v, lv))
        ],
        ctx.out_shape[:-2],
    )
    out = dict(batch)
    if q.dim() - 2 in lq:
        out[ctx.out.dim() - 2] = lq[q.dim() - 2]
    if v.dim() - 1 in lv:
        out[ctx.out.dim() - 1] = lv[v.dim() - 1]
    return out


def non_tensor(ctx: OpContext) -> Any:
    """Ops returning dtypes or devices: nothing to track."""
    return structure_like(ctx.out)


def size(ctx: OpContext) -> Any:
    """``x.size()``, ``x.size(d)``, ``x.shape``: remember which channel slots the sizes came from."""
    x = ctx.arg(0, "input")
    if not isinstance(x, torch.Tensor):
        return structure_like(ctx.out)
    if ctx.op_name == "getattr":
        if ctx.args[1] != "shape":
            return structure_like(ctx.out)
        return size_of(ctx.larg(0), x.dim(), None)
    return size_of(ctx.larg(0), x.dim(), ctx.arg(1, "dim"))


ELEMENTWISE = {
    "add",
    "sub",
    "rsub",
    "mul",
    "truediv",
    "div",
    "floordiv",
    "floor_divide",
    "true_divide",
    "maximum",
    "minimum",
    "where",
    "pow",
    "remainder",
    "fmod",
    "mod",
    "and",
    "or",
    "xor",
    "eq",
    "ne",
    "lt",
    "le",
    "gt",
    "ge",
    "masked_fill",
    "addcmul",
    "addcdiv",
    "lerp",
    "atan2",
    "hypot",
    "copysign",
    "clamp",
    "clip",
    "clamp_min",
    "clamp_max",
    "neg",
}
PASSTHROUGH = {
    "relu",
    "relu6",
    "silu",
    "gelu",
    "sigmoid",
    "tanh",
    "hardswish",
    "hardsigmoid",
    "hardtanh",
    "leaky_relu",
    "elu",
    "selu",
    "celu",
    "mish",
    "softplus",
    "softsign",
    "tanhshrink",
    "logsigmoid",
    "threshold",
    "glu_",
    "dropout",
    "dropout1d",
    "dropout2d",
    "dropout3d",
    "alpha_dropout",
    "feature_alpha_dropout",
    "native_dropout",
    "contiguous",
    "clone",
    "detach",
    "float",
    "half",
    "double",
    "bfloat16",
    "to",
    "type",
    "type_as",
    "abs",
    "exp",
    "log",
    "sqrt",
    "rsqrt",
    "sin",
    "cos",
    "erf",
    "reciprocal",
    "square",
    "sign",
    "floor",
    "ceil",
    "round",
    "trunc",
    "frac",
    "_to_copy",
    "alias",
    "lift_fresh_copy",
    "requires_grad",
    "cpu",
    "cuda",
    "stochastic_depth",
    "hardshrink",
    "softshrink",
    "silu_",
    "log1p",
    "expm1",
    "sigmoid_",
    "bitwise_not",
    "logical_not",
    "nan_to_num",
    "positive",
}
SPATIAL = {
    "max_pool1d": 1,
    "max_pool2d": 2,
    "max_pool3d": 3,
    "avg_pool1d": 1,
    "avg_pool2d": 2,
    "avg_pool3d": 3,
    "adaptive_avg_pool1d": 1,
    "adaptive_avg_pool2d": 2,
    "adaptive_avg_pool3d": 3,
    "adaptive_max_pool1d": 1,
    "adaptive_max_pool2d": 2,
    "adaptive_max_pool3d": 3,
    "lp_pool1d": 1,
    "lp_pool2d": 2,
    "lp_pool3d": 3,
    "max_pool2d_with_indices": 2,
    "max_pool3d_with_indices": 3,
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
    "adaptive_max_pool2d_with_indices": 2,
}
REDUCTIONS = {
    "mean": False,
    "sum": False,
    "amax": False,
    "amin": False,
    "max": False,
    "min": False,
    "std": False,
    "var": False,
    "prod": False,
    "logsumexp": False,
    "argmax": False,
    "argmin": False,
    "norm": False,
    "var_mean": False,
    "std_mean": False,
    "softmax": True,
    "log_softmax": True,
    "_softmax": True,
    "_log_softmax": True,
    "cumsum": True,
    "normalize": True,
    "all": False,
    "any": False,
    "median": False,
    "linalg_vector_norm": False,
}
