"""The channel propagation pass: runs the graph once and ties every channel to the slices it touches."""

from __future__ import annotations

import contextlib
import operator
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch._subclasses.fake_tensor import FakeTensorMode

from ..capture.inputs import tensor_shapes
from ..capture.meta import meta_empty, meta_inputs, meta_like, on_meta
from ..capture.modules import module_table, named_tensors
from . import registry
from .context import OpContext, Unsupported, iter_labels, op_name, scope_of, structure_like
from .costs import CostRecorder, CostTable
from .layer_results import CONVS, conv_like, linear_like
from .slots import SlotTable
from .tied import couple_tied, tensor_aliases

__all__ = ["ChannelPropagation", "PropagationResult", "propagate_shapes"]


@dataclass
class PropagationResult:
    table: SlotTable
    labels: dict[fx.Node, Any]
    unsupported: list[Unsupported]
    constraints: list
    module_io: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # per call, in order
    constants: list = field(default_factory=list)  # (module, attribute, labels) of channel constants
    costs: CostTable | None = None  # FLOPs and parameters per plan (recorded on the meta-device pass)


class ChannelPropagation(fx.Interpreter):
    """An ``fx.Interpreter`` that computes, for every tensor, which channel slots its dims carry.

    Example::

        gm = torch.fx.symbolic_trace(model)
        result = ChannelPropagation(gm).propagate(torch.randn(1, 3, 32, 32))
        result.table  # the union-find of parameter channel slots
    """

    def __init__(
        self,
        gm: fx.GraphModule,
        graph_is_export: bool = False,
        model: nn.Module | None = None,
        shapes_only: bool = False,
        on_meta_device: bool = False,
    ):
        super().__init__(gm, garbage_collect_values=True)
        self.shapes_only = shapes_only or on_meta_device
        self.on_meta_device = on_meta_device
        self._meta_device = torch.device("meta")
        self._meta_constants: dict[int, torch.Tensor] = {}
        self.recorder: CostRecorder | None = None
        self.graph_is_export = graph_is_export
        self.model = model
        self.constants: list = []
        self.table = SlotTable()
        self.node_labels: dict[fx.Node, Any] = {}
        self.unsupported: list[Unsupported] = []
        self.constraints: list = []
        self.module_io: dict[str, list[tuple[Any, Any]]] = {}
        self._attr_names = {}
        for n, t in named_tensors(gm):  # a tensor under several names: the last one
            self._attr_names[id(t)] = n
        if model is not None:  # tensors the capture made (traced constants) are not the model's to slice
            owned = {id(t) for _, t in named_tensors(model)}
            self._attr_names = {i: n for i, n in self._attr_names.items() if i in owned}

    def propagate(self, *args: Any, **kwargs: Any) -> PropagationResult:
        """Run the graph on ``args``/``kwargs`` and return the channel labels and the slot table.

        With ``on_meta_device`` the inputs must be meta tensors; the parameters are swapped for meta
        tensors while the graph runs (:func:`fxprune.capture.meta.on_meta`).
        """
        if kwargs:
            placeholders = [n.target for n in self.graph.nodes if n.op == "placeholder"]
            args = tuple(args) + tuple(kwargs[p] for p in placeholders[len(args) :] if p in kwargs)
        with torch.no_grad():
            if self.on_meta_device:
                roots = [self.module] + ([self.model] if self.model is not None else [])
                with on_meta(roots, factories=False) as memo:  # the device around each op: _factories
                    self._attr_names = {id(memo.get(i)): n for i, n in self._attr_names.items()}
                    self.recorder = _cost_recorder(self.module, roots[-1])
                    with self.recorder:
                        self.run(*args)
            else:
                self.run(*args)
        aliases = tensor_aliases(self.model if self.model is not None else self.module)
        couple_tied(self.table, aliases)
        costs = None
        if self.recorder is not None:
            costs = self.recorder.table
            costs.resolve(self.table, aliases)
        return PropagationResult(
            self.table, self.node_labels, self.unsupported, self.constraints, self.module_io, self.constants,
            costs,
        )

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        m = self.submodules.get(target) if isinstance(target, str) else None
        if m is None:  # a module reachable under several names is listed under its first one only
            m = self.fetch_attr(target)
        if self.shapes_only and args and isinstance(args[0], torch.Tensor):
            if isinstance(m, _SHAPE_PRESERVING):  # only shapes matter
                return args[0] if self.on_meta_device else torch.empty_like(args[0])
            if self.on_meta_device and type(m) in _ADAPTIVE_POOLS and len(args) == 1 and not kwargs:
                return _adaptive_pool_like(m, args[0])
            if self.recorder is not None and type(m) in CONVS and len(args) == 1 and not kwargs:
                out = conv_like(m, args[0], self.recorder)
                if out is not None:
                    return out
            if self.recorder is not None and type(m) is nn.Linear and len(args) == 1 and not kwargs:
                out = linear_like(m, args[0], self.recorder)
                if out is not None:
                    return out
        with self._factories():
            return m(*args, **kwargs)

    def call_function(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if self.on_meta_device and target in _BINARY and not kwargs:
            out = _broadcast_like(args)
            if out is not None:
                return out
        with self._factories():
            return super().call_function(target, args, kwargs)

    def call_method(self, target: Any, args: tuple, kwargs: dict) -> Any:
        with self._factories():
            return super().call_method(target, args, kwargs)

    def _factories(self) -> Any:
        """Around the model's own code on the meta pass: factory calls without a device make meta tensors.
        (Only there: ``torch.device`` is a torch-function mode, and every tensor method called under it, the
        handlers' included, goes through Python.)"""
        return self._meta_device if self.on_meta_device else contextlib.nullcontext()

    def get_attr(self, target: str, args: tuple, kwargs: dict) -> Any:
        value = super().get_attr(target, args, kwargs)
        if self.on_meta_device and isinstance(value, torch.Tensor) and value.device.type != "meta":
            meta = self._meta_constants.get(id(value))  # a tensor the capture made (not a parameter)
            if meta is None:
                meta = self._meta_constants[id(value)] = meta_like(value)
            return meta
        return value

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if str(target).startswith("**"):
            return {}  # ``**kwargs`` of a forward traced with none
        return super().placeholder(target, args, kwargs)

    def _labels_of(self, a: Any) -> Any:
        return fx.node.map_aggregate(a, lambda x: self.node_labels.get(x) if isinstance(x, fx.Node) else None)

    def run_node(self, n: fx.Node) -> Any:
        if fx.traceback.has_preserved_node_meta():  # else ``_set_current_node`` does nothing
            with self._set_current_node(n):
                args, kwargs, labels, out = self._run_op(n)
        else:
            args, kwargs, labels, out = self._run_op(n)
        self.node_labels[n] = self._node_labels(n, args, kwargs, out, labels)
        return out

    def _run_op(self, n: fx.Node) -> tuple:
        args, kwargs = self.fetch_args_kwargs_from_env(n)
        labels = self._labels_of(n.args), self._labels_of(n.kwargs)
        if self.recorder is not None:
            self.recorder.begin_node((args, kwargs), labels)
        return args, kwargs, labels, getattr(self, n.op)(n.target, args, kwargs)

    def _node_labels(self, n: fx.Node, args: tuple, kwargs: dict, out: Any, labels: tuple) -> Any:
        """The labels of ``n``'s output; ``labels`` are those of its args and kwargs."""
        if n.op == "placeholder":
            return structure_like(out)
        if n.op == "get_attr":
            return self._attr_labels(n.target, out)
        largs, lkwargs = labels
        if n.op == "output":
            for lab in iter_labels((largs, lkwargs)):
                self.table.freeze(lab, "model output")
            return None
        ctx = self._context(n, args, kwargs, largs, lkwargs, out)
        if n.op == "call_module":
            m = self.submodules.get(n.target) or self.module.get_submodule(n.target)
            handler = registry.module_handler(m)
            labels = handler(ctx, m) if handler else ctx.unsupported_op(f"module {type(m).__name__}")
            self.module_io.setdefault(n.target, []).append((largs, labels))
            return labels
        handler = registry.function_handler(op_name(n)) or registry.unknown
        labels = handler(ctx)
        layer_call = self._layer_call(n) if self.graph_is_export else None
        if layer_call:
            owner, first_input = layer_call
            self.module_io.setdefault(owner, []).append((largs[first_input:], labels))
        return labels

    def _context(
        self, n: fx.Node, args: tuple, kwargs: dict, largs: Any, lkwargs: Any, out: Any
    ) -> OpContext:
        return OpContext(
            n,
            tuple(args),
            dict(kwargs),
            tuple(largs),
            dict(lkwargs),
            out,
            self.table,
            self.module,
            n.target if n.op == "call_module" else scope_of(n),
            self.graph_is_export,
            self.unsupported,
            self.constraints,
            self.constants,
            self.model,
        )

    def _attr_labels(self, target: str, value: Any) -> Any:
        if not isinstance(value, torch.Tensor) or id(value) not in self._attr_names:
            return structure_like(value)
        owner = target.rpartition(".")[0]
        kernel = _kernel_dims(self.model if self.model is not None else self.module, target)
        return {
            d: self.table.block(owner, ((target, d),), s, passive=True)
            for d, s in enumerate(value.shape)
            if s > 1 and d not in kernel
        }

    def _layer_call(self, n: fx.Node) -> tuple[str, int] | None:
        """For a layer op in an exported graph: the module owning its parameter and where its input starts."""
        spec = registry.layer_args(op_name(n))
        if spec is None or len(n.args) <= max(spec.weight, spec.input):
            return None
        w = n.args[spec.weight]
        if isinstance(w, fx.Node) and w.op == "get_attr":
            owner, x = w.target.rpartition(".")[0], n.args[spec.input]
            if isinstance(x, fx.Node) and scope_of(x) == owner:
                return None  # the module's forward transformed its input first (LayerNorm2d's permute)
            return owner, spec.input
        return None


def _cost_recorder(gm: fx.GraphModule, model: nn.Module) -> CostRecorder:
    """A recorder knowing the (meta) parameters and buffers by name; the model's parameters counted once."""
    names: dict[int, str] = {}
    for n, t in named_tensors(gm):
        names.setdefault(id(t), n)
    recorder = CostRecorder(names)
    recorder.add_params(named_tensors(model, buffers=False, remove_duplicate=True))
    return recorder


def propagate_shapes(
    gm: fx.GraphModule, graph_is_export: bool, model: nn.Module, args: tuple, kwargs: dict
) -> PropagationResult:
    """Channel propagation without arithmetic: on meta tensors, else on fake tensors, else on real ones.

    The meta run is the fastest; a model that mixes devices or creates tensors the meta device cannot hold
    falls back to fake tensors, and one that reads tensor values to real ones.
    """
    with module_table(gm, model):
        return _propagate_shapes(gm, graph_is_export, model, args, kwargs)


def _propagate_shapes(
    gm: fx.GraphModule, graph_is_export: bool, model: nn.Module, args: tuple, kwargs: dict
) -> PropagationResult:
    try:
        result = ChannelPropagation(gm, graph_is_export, model, on_meta_device=True).propagate(
            *meta_inputs(tuple(args)), **meta_inputs(dict(kwargs))
        )
        result.costs.input_shapes = tensor_shapes((tuple(args), dict(kwargs)))
        return result
    except Exception:
        pass
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    fake = lambda v: fake_mode.from_tensor(v) if isinstance(v, torch.Tensor) else v  # noqa: E731
    try:
        fake_args, fake_kwargs = [fake(a) for a in args], {k: fake(v) for k, v in kwargs.items()}
        with fake_mode:
            return ChannelPropagation(gm, graph_is_export, model, shapes_only=True).propagate(
                *fake_args, **fake_kwargs
            )
    except Exception:
        return ChannelPropagation(gm, graph_is_export, model).propagate(*args, **kwargs)


_SHAPE_PRESERVING = (
    nn.modules.batchnorm._NormBase,
    nn.LayerNorm,
    nn.GroupNorm,
    nn.Identity,
    nn.modules.dropout._DropoutNd,
    nn.ReLU,
    nn.ReLU6,
    nn.SiLU,
    nn.GELU,
    nn.Sigmoid,
    nn.Hardswish,
    nn.Hardsigmoid,
    nn.LeakyReLU,
    nn.Tanh,
    nn.Mish,
)


# Elementwise arithmetic of two operands: on meta tensors torch computes their result's shape in Python
# (a few hundred microseconds per op); for same-dtype float operands it is the broadcast shape.
_BINARY = {
    operator.add, operator.sub, operator.mul, operator.truediv, torch.add, torch.sub, torch.mul, torch.div
}
_ADAPTIVE_POOLS = {nn.AdaptiveAvgPool1d: 1, nn.AdaptiveAvgPool2d: 2, nn.AdaptiveAvgPool3d: 3}  # spatial dims


def _broadcast_like(args: tuple) -> torch.Tensor | None:
    """The meta result of an elementwise op of ``args`` (two operands), or None to run the op itself.

    Only floating tensors of one dtype, contiguous, with Python numbers: the result is then a contiguous
    tensor of that dtype and the broadcast shape.
    """
    if len(args) != 2:
        return None
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if not tensors or any(not isinstance(a, (torch.Tensor, int, float)) or isinstance(a, bool) for a in args):
        return None
    first = tensors[0]
    if not first.dtype.is_floating_point or any(
        t.dtype != first.dtype or t.device != first.device or not t.is_contiguous() for t in tensors
    ):
        return None
    ndim = max(t.dim() for t in tensors)
    shape = [1] * ndim
    for t in tensors:
        for i, n in enumerate(t.shape, start=ndim - t.dim()):
            if n != 1:
                if shape[i] not in (1, n):
                    return None  # not broadcastable: the op itself raises
                shape[i] = n
    return meta_empty(shape, first.dtype) if first.device.type == "meta" else first.new_empty(shape)


def _adaptive_pool_like(m: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The meta result of an adaptive average pool: the input's leading dims, then the output size."""
    k = _ADAPTIVE_POOLS[type(m)]
    if x.dim() not in (k + 1, k + 2) or not x.dtype.is_floating_point:
        return m(x)
    size = m.output_size if isinstance(m.output_size, (tuple, list)) else (m.output_size,) * k
    spatial = [x.shape[x.dim() - k + i] if s is None else s for i, s in enumerate(size)]
    shape = (*x.shape[: x.dim() - k], *spatial)
    return meta_empty(shape, x.dtype) if x.device.type == "meta" else x.new_empty(shape)


def _kernel_dims(root: nn.Module, target: str) -> range:
    """The spatial dims of ``target`` when it is the weight of a conv layer, else none."""
    owner, _, attr = target.rpartition(".")
    try:
        m = root.get_submodule(owner)
    except AttributeError:
        return range(0)
    if attr == "weight" and isinstance(m, nn.modules.conv._ConvNd):
        return range(2, m.weight.dim())
    return range(0)


