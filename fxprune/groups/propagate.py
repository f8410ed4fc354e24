"""The channel propagation pass: runs the graph once and ties every channel to the slices it touches."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from . import registry
from .context import OpContext, Unsupported, iter_labels, op_name, structure_like
from .slots import SlotTable
from .tied import couple_tied, tensor_aliases

__all__ = ["ChannelPropagation", "PropagationResult"]


@dataclass
class PropagationResult:
    table: SlotTable
    labels: dict[fx.Node, Any]
    unsupported: list[Unsupported]
    constraints: list
    module_io: dict[str, list[tuple[Any, Any]]] = field(default_factory=dict)  # per call, in order
    constants: list = field(default_factory=list)  # (module, attribute, labels) of channel constants


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
    ):
        super().__init__(gm, garbage_collect_values=True)
        self.shapes_only = shapes_only
        self.graph_is_export = graph_is_export
        self.model = model
        self.constants: list = []
        self.table = SlotTable()
        self.node_labels: dict[fx.Node, Any] = {}
        self.unsupported: list[Unsupported] = []
        self.constraints: list = []
        self.module_io: dict[str, list[tuple[Any, Any]]] = {}
        self._attr_names = {id(p): n for n, p in gm.named_parameters(remove_duplicate=False)}
        self._attr_names.update({id(b): n for n, b in gm.named_buffers(remove_duplicate=False)})
        if model is not None:  # tensors the capture made (traced constants) are not the model's to slice
            owned = {id(t) for t in [*model.parameters(), *model.buffers()]}
            self._attr_names = {i: n for i, n in self._attr_names.items() if i in owned}

    def propagate(self, *args: Any, **kwargs: Any) -> PropagationResult:
        with torch.no_grad():
            if kwargs:
                placeholders = [n.target for n in self.graph.nodes if n.op == "placeholder"]
                args = tuple(args) + tuple(kwargs[p] for p in placeholders[len(args) :] if p in kwargs)
            self.run(*args)
        couple_tied(self.table, tensor_aliases(self.model if self.model is not None else self.module))
        return PropagationResult(
            self.table, self.node_labels, self.unsupported, self.constraints, self.module_io, self.constants
        )

    def call_module(self, target: str, args: tuple, kwargs: dict) -> Any:
        if self.shapes_only and args and isinstance(args[0], torch.Tensor):
            if isinstance(self.fetch_attr(target), _SHAPE_PRESERVING):
                return torch.empty_like(args[0])  # only shapes matter on fake tensors
        return super().call_module(target, args, kwargs)

    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if str(target).startswith("**"):
            return {}  # ``**kwargs`` of a forward traced with none
        return super().placeholder(target, args, kwargs)

    def _labels_of(self, a: Any) -> Any:
        return fx.node.map_aggregate(a, lambda x: self.node_labels.get(x) if isinstance(x, fx.Node) else None)

    def run_node(self, n: fx.Node) -> Any:
        with self._set_current_node(n):
            args, kwargs = self.fetch_args_kwargs_from_env(n)
            out = getattr(self, n.op)(n.target, args, kwargs)
        self.node_labels[n] = self._node_labels(n, args, kwargs, out)
        return out

    def _node_labels(self, n: fx.Node, args: tuple, kwargs: dict, out: Any) -> Any:
        if n.op == "placeholder":
            return structure_like(out)
        if n.op == "get_attr":
            return self._attr_labels(n.target, out)
        largs, lkwargs = self._labels_of(n.args), self._labels_of(n.kwargs)
        if n.op == "output":
            for lab in iter_labels((largs, lkwargs)):
                self.table.freeze(lab, "model output")
            return None
        ctx = self._context(n, args, kwargs, largs, lkwargs, out)
        if n.op == "call_module":
            m = self.module.get_submodule(n.target)
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
            n.target if n.op == "call_module" else _scope_of(n),
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
            return w.target.rpartition(".")[0], spec.input
        return None


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


def _scope_of(n: fx.Node) -> str:
    stack = n.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return ""
