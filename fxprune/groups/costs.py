"""FLOPs and parameters of any plan, from one shape-only pass: no slimmed copy, no forward pass per plan.

During channel propagation on meta tensors, :class:`CostRecorder` (a torch dispatch mode) sees every aten
op. It records each op that ``torch.utils.flop_counter`` counts (convolutions, matrix products, attention)
with the shapes of its operands and, for every operand dim, the channel labels that dim is made of: the
labels of the fx node's inputs, the parameter dims a layer owns, followed through views, transposes,
reshapes and the products themselves. :meth:`CostTable.flops` then evaluates torch's own FLOP formulas on
the shapes a plan leaves (each dim scaled by the fraction of its labels kept), so a plan costs a few
milliseconds to count. An operand dim whose width cannot be followed (a slice along a channel dim, a
tensor computed inside a layer from something else) makes the table inexact (:attr:`CostTable.exact`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map
from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

from .cost_views import view_dims
from .slots import SlotTable

__all__ = ["EXTRA_FLOP_FORMULAS", "CostRecorder", "CostTable"]

aten = torch.ops.aten


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


# Kernels torch's counter has no formula for although they do the work of one it has: the fused CPU
# attention (counted like the other attention kernels, so that real CPU passes and meta passes agree).
EXTRA_FLOP_FORMULAS = {aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flops}
FLOP_FORMULAS = {**flop_registry, **{k: shape_wrapper(f) for k, f in EXTRA_FLOP_FORMULAS.items()}}
Dim = tuple[int, ...] | None  # indices of the factors scaling one dim; None: the width cannot be followed

_QUERIES = {
    aten.sym_is_contiguous.default, aten.is_contiguous.default, aten.is_contiguous.memory_format,
    aten.is_strides_like_format.default, aten.is_non_overlapping_and_dense.default, aten.size.default,
    aten.sym_size.default, aten.stride.default, aten.sym_stride.default, aten.storage_offset.default,
    aten.sym_storage_offset.default, aten.numel.default, aten.sym_numel.default, aten.dim.default,
    torch.ops.prim.layout.default,
}  # the ops FlopCounterMode leaves alone, as here
_SAME_DIMS = {aten.clone, aten.alias, aten.detach, aten._to_copy, aten.lift_fresh, aten.contiguous}
_PRODUCTS = {aten.mm: (0, 1), aten.addmm: (1, 2), aten.bmm: (0, 1), aten.baddbmm: (1, 2)}  # operand positions


@dataclass
class _Shape:
    """A tensor operand of a recorded op: its dense shape and what scales each dim."""

    size: tuple[int, ...]
    dims: tuple[Dim, ...] | None  # None: the tensor is not followed (every dim counts as dense)


@dataclass
class _Entry:
    op: Any  # an OpOverloadPacket of flop_registry
    args: Any  # the op's args/kwargs with every tensor replaced by a _Shape
    kwargs: Any
    out: Any
    dense: int


@dataclass
class CostTable:
    """The recorded ops and factors of one model; evaluates FLOPs and parameters for removed slots.

    ``factors[i]`` is a slot array (the labels of a dim) or ``(parameter name, dim)`` until
    :meth:`resolve` maps parameter dims to their slots. ``params`` lists ``(size, dims)`` per parameter.
    """

    entries: list[_Entry] = field(default_factory=list)
    factors: list[Any] = field(default_factory=list)
    params: list[_Shape] = field(default_factory=list)
    exact: bool = True
    input_shapes: list[tuple[int, ...]] | None = None  # of the example inputs the pass ran on
    _index: dict[Any, int] = field(default_factory=dict, repr=False)

    @property
    def dense_flops(self) -> int:
        return int(sum(e.dense for e in self.entries))

    def factor(self, key: Any, value: Any) -> int:
        i = self._index.get(key)
        if i is None:
            i = self._index[key] = len(self.factors)
            self.factors.append(value)
        return i

    def resolve(self, table: SlotTable, aliases: dict[str, str]) -> None:
        """Replace parameter-dim factors by the slots of the block that slices that dim (or none)."""
        slots_of: dict[tuple[str, int], np.ndarray] = {}
        for b in table.blocks:
            for name, d in b.members:
                slots_of.setdefault((aliases.get(name, name), d), b.slots)
        for i, f in enumerate(self.factors):
            if isinstance(f, tuple):
                name, d = f
                self.factors[i] = slots_of.get((aliases.get(name, name), d))
        self._starts, self._concat = _segments(self.factors)

    def kept_fractions(self, table: SlotTable, gone_roots: np.ndarray) -> np.ndarray:
        """Fraction of every factor's slots whose class is not in ``gone_roots``."""
        if getattr(self, "_roots", None) is None or len(self._roots) != len(table):
            self._roots = table.all_roots()  # the classes do not change once the analysis is done
        gone = np.zeros(len(table), dtype=bool)
        gone[gone_roots] = True
        gone = gone[self._roots]
        lengths = np.diff(np.append(self._starts, len(self._concat)))
        kept = np.ones(len(self.factors))
        if len(self._concat):
            counts = np.add.reduceat((~gone[self._concat]).astype(np.int64), self._starts)
            kept = np.where(lengths > 0, counts / np.maximum(lengths, 1), 1.0)
        return kept

    def flops(self, kept: np.ndarray) -> int:
        """FLOPs once each factor keeps the fraction ``kept[i]`` of its channels."""
        if len(kept) == 0 or bool((kept == 1.0).all()):  # nothing removed: each op's figure from the pass
            return int(round(sum(e.dense for e in self.entries)))
        total = 0.0
        scaled = lambda v: _scaled(v, kept) if isinstance(v, _Shape) else v  # noqa: E731
        for e in self.entries:
            formula = getattr(FLOP_FORMULAS[e.op], "__wrapped__", None)  # the formula on shapes
            if formula is None or not isinstance(e.out, _Shape):
                args, kwargs = tree_map(scaled, e.args), tree_map(scaled, e.kwargs)
                total += FLOP_FORMULAS[e.op](*args, **kwargs, out_val=tree_map(scaled, e.out))
                continue
            args = [scaled(a) for a in e.args]
            kwargs = {k: scaled(v) for k, v in e.kwargs.items()}
            total += formula(*args, out_shape=scaled(e.out), **kwargs)
        return int(round(total))

    def param_count(self, kept: np.ndarray) -> int:
        """Parameter elements once each factor keeps the fraction ``kept[i]`` of its channels."""
        return int(round(sum(math.prod(_scaled(p, kept)) for p in self.params)))


def _segments(factors: list[Any]) -> tuple[np.ndarray, np.ndarray]:
    arrays = [np.asarray(f, dtype=np.int64) if f is not None else np.zeros(0, np.int64) for f in factors]
    lengths = np.array([len(a) for a in arrays], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]) if len(arrays) else np.zeros(0, np.int64)
    concat = np.concatenate(arrays) if arrays else np.zeros(0, np.int64)
    return np.minimum(starts, max(len(concat) - 1, 0)), concat


def _scaled(s: _Shape, kept: np.ndarray) -> list[float]:
    if s.dims is None:
        return list(s.size)
    return [n * math.prod(kept[i] for i in d) if d else n for n, d in zip(s.size, s.dims)]


class CostRecorder(TorchDispatchMode):
    """Records the FLOP-counted ops of a shape-only pass with what scales each operand dim.

    The propagation calls :meth:`begin_node` before each fx node with the node's inputs and their labels,
    so the dims of every tensor an op sees are followed from the node's inputs and from the parameters
    (``param_names``: ``id(tensor) -> name`` of the tensors the layers hold during the pass).
    """

    def __init__(self, param_names: dict[int, str]) -> None:
        super().__init__()
        self.table = CostTable()
        self.param_names = param_names
        self.dims: dict[int, tuple[torch.Tensor, tuple[Dim, ...]]] = {}
        self.inputs: dict[int, tuple[torch.Tensor, dict]] = {}  # the node's input tensors and their labels

    def begin_node(self, values: Any, labels: Any) -> None:
        """Follow the node's input tensors: each labelled dim scales with its labels (worked out when an op
        of the node reads the tensor; most nodes run no counted op)."""
        self.dims = {}
        self.inputs = {id(v): (v, lab) for v, lab in _pairs(values, labels)}

    def add_params(self, named: list[tuple[str, torch.Tensor]]) -> None:
        """Record the parameters (each once) for :meth:`CostTable.param_count`."""
        for name, p in named:
            dims = tuple((self.table.factor((name, d), (name, d)),) for d in range(p.dim()))
            self.table.params.append(_Shape(tuple(p.shape), dims))

    def dims_of(self, t: torch.Tensor) -> tuple[Dim, ...] | None:
        hit = self.dims.get(id(t))
        if hit is not None and hit[0] is t:
            return hit[1]
        given = self.inputs.get(id(t))
        if given is not None and given[0] is t:
            lab = given[1]
            dims = tuple((self.table.factor(id(lab[d]), lab[d]),) if d in lab else () for d in range(t.dim()))
            self.dims[id(t)] = (t, dims)
            return dims
        name = self.param_names.get(id(t))
        if name is not None:
            return tuple((self.table.factor((name, d), (name, d)),) for d in range(t.dim()))
        return None

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in _QUERIES:
            return NotImplemented
        packet = func._overloadpacket
        if packet not in FLOP_FORMULAS and func is not torch.ops.prim.device.default and _decomposes(func):
            with self:
                r = func.decompose(*args, **kwargs)
                if r is not NotImplemented:
                    return r
        out = func(*args, **kwargs)
        self.note_op(packet, args, kwargs, out)
        return out

    def note_op(self, packet, args: tuple, kwargs: dict, out: Any) -> None:
        """What the mode does after running an aten op (``packet``: its overload packet): follow the output's
        dims and record the op's cost. A caller computing an op's meta result itself calls this instead."""
        try:
            self._follow(packet, args, kwargs, out)
        except Exception:  # an op this table cannot follow: its outputs are simply not followed
            pass
        if packet in FLOP_FORMULAS:
            self._record(packet, args, kwargs, out)

    def _shape(self, v: Any, operand: bool = True) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        dims = self.dims_of(v)
        if operand and (dims is None or any(d is None for d in dims)) and _has_channels(v):
            self.table.exact = False
        return _Shape(tuple(v.shape), dims)

    def _follow(self, packet, args, kwargs, out) -> None:
        outs = out if isinstance(out, (list, tuple)) else [out]
        for o in outs:
            if isinstance(o, torch.Tensor):
                dims = _out_dims(self, packet, args, kwargs, o)
                if dims is not None:
                    self.dims[id(o)] = (o, tuple(dims))

    def _record(self, packet, args, kwargs, out) -> None:
        e_args, e_kwargs = _map_tensors(self._shape, args), _map_tensors(self._shape, kwargs)
        e_out = _map_tensors(lambda v: self._shape(v, operand=False), out)
        formula = getattr(FLOP_FORMULAS[packet], "__wrapped__", None)  # the formula on shapes
        if formula is not None and isinstance(e_out, _Shape) and not _nested([*e_args, *e_kwargs.values()]):
            size = lambda v: list(v.size) if isinstance(v, _Shape) else v  # noqa: E731
            kw = {k: size(v) for k, v in e_kwargs.items()}
            dense = formula(*map(size, e_args), out_shape=size(e_out), **kw)
        else:
            dense = FLOP_FORMULAS[packet](*args, **kwargs, out_val=out)
        self.table.entries.append(_Entry(packet, e_args, e_kwargs, e_out, dense))


_COMPOSITE = torch._C.DispatchKey.CompositeImplicitAutograd
_HAS_COMPOSITE: dict[Any, bool] = {}  # op overload -> whether it has a C++ CompositeImplicitAutograd kernel


def _decomposes(func) -> bool:
    """Whether ``func.decompose`` can do anything (else it returns NotImplemented): the same test as
    ``OpOverload.decompose``'s, with the kernel lookup remembered per op."""
    if _COMPOSITE in func.py_kernels:
        return True
    known = _HAS_COMPOSITE.get(func)
    if known is None:
        known = _HAS_COMPOSITE[func] = torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), _COMPOSITE)
    return known


def _map_tensors(fn, value: Any) -> Any:
    """``value`` (op arguments: nested tuples, lists, dicts) with every tensor replaced by ``fn(tensor)``."""
    if isinstance(value, torch.Tensor):
        return fn(value)
    if type(value) in (tuple, list):
        return type(value)(_map_tensors(fn, v) for v in value)
    if type(value) is dict:
        return {k: _map_tensors(fn, v) for k, v in value.items()}
    return tree_map(fn, value) if isinstance(value, (tuple, list, dict)) else value


def _nested(values: list) -> bool:
    """Whether a value nests an operand in a sequence (the shape formulas take top-level shapes only)."""
    for v in values:
        if isinstance(v, (tuple, list)) and (any(isinstance(x, _Shape) for x in v) or _nested(v)):
            return True
        if isinstance(v, dict) and _nested([list(v.values())]):
            return True
    return False


def _has_channels(t: torch.Tensor) -> bool:
    return t.dim() > 0 and t.numel() > 1


def _pairs(values: Any, labels: Any):
    """(tensor, labels dict) pairs of a node's nested argument values and labels."""
    if isinstance(values, torch.Tensor):
        if isinstance(labels, dict):
            yield values, labels
    elif isinstance(values, (list, tuple)) and isinstance(labels, (list, tuple)):
        for v, lab in zip(values, labels):
            yield from _pairs(v, lab)
    elif isinstance(values, dict) and isinstance(labels, dict):
        for k, v in values.items():
            yield from _pairs(v, labels.get(k))


def _out_dims(rec: CostRecorder, packet, args, kwargs, out: torch.Tensor):
    """What scales each dim of an op's output ``i``, where the op's semantics say so."""
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    xd = rec.dims_of(x) if x is not None else None
    if packet in _PRODUCTS:
        a_at, b_at = _PRODUCTS[packet]
        ad, bd = rec.dims_of(args[a_at]), rec.dims_of(args[b_at])
        if ad is None or bd is None:
            return None
        return (*ad[:-1], bd[-1])
    if packet is aten.convolution and xd is not None:
        wd = rec.dims_of(args[1])
        transposed, groups = args[6], args[8]
        if wd is None or (transposed and groups != 1):
            return None
        return (xd[0], wd[1] if transposed else wd[0], *[()] * (out.dim() - 2))
    if xd is None:
        return None
    dims = view_dims(packet, args, xd, out)
    if dims is not None:
        return dims
    if packet in _SAME_DIMS or tuple(out.shape) == tuple(x.shape):
        return xd
    for a in tree_flatten((args, kwargs))[0]:  # broadcasting ops: the operand with the output's shape
        if isinstance(a, torch.Tensor) and tuple(a.shape) == tuple(out.shape):
            return rec.dims_of(a)
    return None
