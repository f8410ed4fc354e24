"""Values of traced sizes, computed from the example inputs while a symbolic trace runs.

Python control flow on a size (``if H != self.window_size:``, ``int(math.sqrt(N))``, ``max(k_h / q_h, 1)``)
stops ``torch.fx``: the size is a proxy. :class:`ShapeValues` computes such a value from the nodes traced
so far on meta tensors (shapes only, no arithmetic), so the trace takes the branch the example inputs take,
as ``torch.export`` does, while every size the graph computes from a tensor stays a node (a channel count
read from ``x.shape`` stays tied to its tensor). Values that depend on tensor contents (``if x.any():``)
cannot be computed on meta tensors: they stop the trace as before.
"""

from __future__ import annotations

import builtins
import inspect
import operator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .inputs import ExampleInputs, as_args_kwargs, map_tensors
from .meta import meta_like, on_meta

__all__ = ["ShapeValues", "is_plain_value"]

_PLAIN = (bool, int, float, str, type(None), torch.device, torch.dtype, torch.memory_format)


def is_plain_value(v: Any) -> bool:
    """True for Python scalars, sizes, devices and dtypes (and tuples of them): what control flow may read."""
    if isinstance(v, (tuple, list)):  # torch.Size is a tuple
        return all(is_plain_value(x) for x in v)
    return isinstance(v, _PLAIN)


def _uses_tracing_patches() -> Any:
    """A context in which ``nn.Module.__call__`` and the autowrapped functions are torch's own again."""
    from torch.fx._symbolic_trace import _maybe_revert_all_patches

    return _maybe_revert_all_patches()


class ShapeValues:
    """The value of any node of a graph being traced from ``root``, computed on meta tensors on demand.

    Each node is computed at most once (its ancestors first); parameters, buffers and tensor constants are
    read as meta tensors of their shape. ``x.device`` reads the device of the example inputs.
    """

    def __init__(self, root: nn.Module, example_inputs: ExampleInputs):
        self.root = root
        self.values: dict[fx.Node, Any] = {}
        self._memo: dict[int, torch.Tensor] = {}
        args, kwargs = as_args_kwargs(example_inputs)
        try:
            self.signature: inspect.Signature | None = inspect.signature(root.forward)
            bound = self.signature.bind(*args, **kwargs).arguments
        except (TypeError, ValueError):
            self.signature, bound = None, {}
        self.inputs = {name: map_tensors(v, self._meta) for name, v in bound.items()}
        devices: list[torch.device] = []
        map_tensors((args, kwargs), lambda t: devices.append(t.device))
        self.device = devices[0] if devices else torch.device("cpu")

    def defaults(self) -> dict[str, Any] | None:
        """``forward``'s parameters the example inputs leave out, at their defaults (``mask=None``)."""
        if self.signature is None:
            return None
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        return {
            name: p.default
            for name, p in self.signature.parameters.items()
            if p.kind in kinds and p.default is not inspect.Parameter.empty and name not in self.inputs
        } or None

    def _meta(self, t: torch.Tensor) -> torch.Tensor:
        if t.device.type == "meta":
            return t
        meta = self._memo.get(id(t))
        if meta is None:
            meta = self._memo[id(t)] = meta_like(t)
        return meta

    def value(self, node: fx.Node) -> Any:
        """The value ``node`` has when the model runs on the example inputs (tensors as meta tensors)."""
        if node in self.values:
            return self.values[node]
        needed: set[fx.Node] = set()
        stack = [node]
        while stack:
            n = stack.pop()
            if n in self.values or n in needed:
                continue
            needed.add(n)
            stack.extend(n.all_input_nodes)
        with _uses_tracing_patches(), torch.no_grad():
            for n in node.graph.nodes:
                if n in needed:
                    self.values[n] = self._run(n)
                    if n is node:
                        break
        return self.values[node]

    def _arg(self, a: Any) -> Any:
        a = fx.node.map_arg(a, lambda n: self.values[n])
        return map_tensors(a, self._meta) if not isinstance(a, torch.Tensor) else self._meta(a)

    def _run(self, n: fx.Node) -> Any:
        if n.op == "placeholder":
            name = str(n.target).lstrip("*")
            if name in self.inputs:
                return self.inputs[name]
            return n.args[0] if n.args else ()
        if n.op == "get_attr":
            return self._arg(operator.attrgetter(str(n.target))(self.root))
        if n.op == "output":
            return self._arg(n.args[0])
        args = tuple(self._arg(a) for a in n.args)
        kwargs = {k: self._arg(v) for k, v in n.kwargs.items()}
        if n.op == "call_function":
            if n.target is builtins.getattr and args[1:] == ("device",) and isinstance(args[0], torch.Tensor):
                return self.device
            with torch.device("meta"):
                return n.target(*args, **kwargs)
        if n.op == "call_method":
            with torch.device("meta"):
                return getattr(args[0], str(n.target))(*args[1:], **kwargs)
        module = self.root.get_submodule(str(n.target))
        with on_meta([module]):
            return module(*args, **kwargs)
