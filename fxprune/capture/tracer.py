"""A symbolic tracer that keeps parametric layers as leaves and can iterate over chunk/split results.

Custom ``torch.autograd.Function`` calls stay opaque: the graph holds one call of ``Fn.apply`` (the channel
analysis then freezes what it touches) rather than whatever the Python of its ``forward`` did.
"""

from __future__ import annotations

import bisect
import contextlib
import dis
import fnmatch
import inspect
import operator
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn
from torch.fx.traceback import has_preserved_node_meta

from .inputs import ExampleInputs
from .shape_values import ShapeValues, is_plain_value
from .skeleton import graph_module

__all__ = ["LeafTracer"]

_RUN_ATTRIBUTES = ("device", "dtype")  # values when tracing on example inputs: ``autocast(x.device.type)``
_SPLIT_METHODS = {"chunk", "split", "tensor_split", "split_with_sizes"}
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split}


def _known_length(node: fx.Node) -> int | None:
    """Number of outputs of a chunk/split node when it is fixed by its arguments."""
    is_split = (node.op == "call_method" and node.target in _SPLIT_METHODS) or (
        node.op == "call_function" and node.target in _SPLIT_FUNCTIONS
    )
    if not is_split or len(node.args) < 2:
        return None
    name = node.target if isinstance(node.target, str) else node.target.__name__
    sections = node.args[1]
    if name == "chunk" and isinstance(sections, int):
        return sections
    if isinstance(sections, (list, tuple)):
        return len(sections) + (1 if name == "tensor_split" else 0)
    if name == "tensor_split" and isinstance(sections, int):
        return sections
    return None


def _unpack_length(frame) -> int | None:
    """``a, b, c = proxy`` in the calling frame: the number of names unpacked."""
    if frame is None:
        return None
    insts = list(dis.get_instructions(frame.f_code))
    i = bisect.bisect_left(insts, frame.f_lasti, key=lambda x: x.offset)
    if i < len(insts) and insts[i].opname == "UNPACK_SEQUENCE":
        return insts[i].argval
    return None


def _is_varargs(node: fx.Node) -> bool:
    """True for the ``*args``/``**kwargs`` placeholders of a traced forward (and ``kwargs.keys()``)."""
    if node.op == "call_method" and node.target == "keys" and node.args:
        node = node.args[0]
    return node.op == "placeholder" and str(node.target).startswith("*")


class IterableProxy(fx.Proxy):
    """A proxy that can be iterated when its length is known (``list(x.chunk(2, 1))`` in C2f blocks)."""

    def __iter__(self) -> Iterator[fx.Proxy]:
        if _is_varargs(self.node):
            return iter(())  # ``*args``/``**kwargs`` of forward(x, *args, **kwargs): traced with none
        n = _known_length(self.node)
        if n is None:
            n = _unpack_length(inspect.currentframe().f_back)
        if n is None:
            return super().__iter__()
        return (self[i] for i in range(n))

    def __len__(self) -> int:
        if _is_varargs(self.node):
            return 0
        n = _known_length(self.node)
        if n is None:
            raise RuntimeError("'len' is not supported in symbolic tracing by default")
        return n


class SizedProxy(IterableProxy):
    """A proxy of a trace on example inputs: ``len``, ``int``, ``float``, an index, ``.device`` and ``.dtype``
    read their values on those inputs (:meth:`LeafTracer.size_value`)."""

    def __len__(self) -> int:
        try:
            return super().__len__()
        except RuntimeError:
            return len(self.tracer.size_value(self, "'len' of a traced value"))

    def __int__(self) -> int:
        return int(self.tracer.size_value(self, "int() of a traced value"))

    def __float__(self) -> float:
        return float(self.tracer.size_value(self, "float() of a traced value"))

    def __index__(self) -> int:
        return operator.index(self.tracer.size_value(self, "a traced value used as an index"))

    def __setitem__(self, key: Any, value: Any) -> None:
        """``attn[:, :, 1:, 1:] = ...`` (an in-place write) is recorded as ``operator.setitem``."""
        self.tracer.create_proxy("call_function", operator.setitem, (self, key, value), {})

    def __getattr__(self, name: str) -> Any:
        if name in _RUN_ATTRIBUTES:
            return self.tracer.run_attribute(self, name)
        return super().__getattr__(name)


class LeafTracer(fx.Tracer):
    """Symbolic tracer keeping ``torch.nn`` layers and user-declared modules as leaves.

    ``leaf_modules`` holds module types or glob patterns on qualified module names. The tracer records
    the stack of modules being traced so that a failure can name the module that blocked it. With
    ``example_inputs``, Python control flow on a traced size (``if H != self.window_size``, ``int(N ** .5)``)
    takes the branch those inputs take (:class:`~fxprune.capture.shape_values.ShapeValues`); the size itself
    stays a node wherever the graph computes with it.
    """

    def __init__(self, leaf_modules: Iterable[type | str] = (), example_inputs: ExampleInputs | None = None):
        super().__init__()
        leaves = list(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_patterns = [p for p in leaves if isinstance(p, str)]
        self.scope_stack: list[str] = []
        self._stack_meta: Any = None  # the module stack as nodes made now record it (shared copy)
        self.example_inputs = example_inputs
        self.shape_values: ShapeValues | None = None
        if example_inputs is not None:  # fx's own refusals otherwise (their errors point at the model's code)
            self.to_bool = self._bool_on_inputs  # type: ignore[method-assign]
            self.iter = self._iter_on_inputs  # type: ignore[method-assign]
        # buffers read in forward are nodes: ``self.rel_indices.expand(B, -1, -1, -1)`` with a traced ``B``
        self.proxy_buffer_attributes = example_inputs is not None

    def size_value(self, proxy: fx.Proxy, refusal: str) -> Any:
        """The value of a traced size on the example inputs; TypeError(``refusal``) without them or when
        it depends on tensor contents."""
        if self.shape_values is None:
            raise TypeError(refusal)
        try:
            value = self.shape_values.value(proxy.node)
        except Exception as e:
            raise TypeError(f"{refusal} (not computable from shapes: {type(e).__name__})") from e
        if not is_plain_value(value):
            raise TypeError(f"{refusal} (it depends on tensor values)")
        return value

    def run_attribute(self, proxy: fx.Proxy, name: str) -> Any:
        """``proxy.device`` / ``proxy.dtype`` of a traced tensor on the example inputs (their device)."""
        try:
            value = self.shape_values.value(proxy.node) if self.shape_values is not None else None
        except Exception:
            value = None
        if not isinstance(value, torch.Tensor):
            return fx.proxy.Attribute(proxy, name)
        return self.shape_values.device if name == "device" else getattr(value, name)

    def _bool_on_inputs(self, obj: fx.Proxy) -> bool:
        try:
            return bool(self.size_value(obj, "control flow on a traced value"))
        except TypeError as e:
            raise fx.proxy.TraceError(
                f"symbolically traced variables cannot be used as inputs to control flow ({e})"
            ) from e

    def _iter_on_inputs(self, obj: fx.Proxy) -> Iterator:
        value = self.size_value(obj, "iteration over a traced value")
        return (obj[i] for i in range(len(value)))

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if any(fnmatch.fnmatchcase(module_qualified_name, p) for p in self.leaf_patterns):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        """``fx.Tracer.call_module`` (same scope, module stack and call counts), the path looked up once, the
        scope put back without a copy; ``scope_stack`` (module paths) is left as it was when tracing fails."""
        path = self.path_of_module(m)
        self.scope_stack.append(path)
        scope, kind = self.scope.module_path, self.scope.module_type
        self.scope.module_path, self.scope.module_type = path, type(m)
        calls = self.num_calls.get(path, 0)
        key = f"{path}@{calls}" if calls > 0 else path
        self.module_stack[key] = (path, type(m))
        self._stack_meta = None
        self.num_calls[path] = calls + 1
        try:
            if not self.is_leaf_module(m, path):
                out = forward(*args, **kwargs)
            else:
                out = self.create_proxy("call_module", path, args, kwargs)
        except BaseException:  # the scope back, as torch's context manager puts it (a forward may catch this)
            self.scope.module_path, self.scope.module_type = scope, kind
            raise
        popped, _ = self.module_stack.popitem(last=True)
        self._stack_meta = None
        if popped != key:
            raise AssertionError(f"Unexpected key {popped}, expected {key}")
        self.scope.module_path, self.scope.module_type = scope, kind
        self.scope_stack.pop()
        return out

    def create_node(
        self, kind: str, target: Any, args: tuple, kwargs: dict, name: str | None = None, type_expr=None
    ) -> fx.Node:
        """``fx.TracerBase.create_node``; nodes made between two module entries or exits share one copy of the
        module stack as ``nn_module_stack``."""
        if self.check_mutable_operations or self.record_stack_traces or has_preserved_node_meta():
            return super().create_node(kind, target, args, kwargs, name, type_expr)
        node = self.graph.create_node(kind, target, args, kwargs, name, type_expr)
        self.node_name_to_scope[node.name] = (self.scope.module_path, self.scope.module_type)
        if self.module_stack:
            if self._stack_meta is None:
                self._stack_meta = self.module_stack.copy()  # an OrderedDict, as copy.copy makes it
            node.meta["nn_module_stack"] = self._stack_meta
        return node

    def create_arg(self, a: Any) -> Any:
        """``fx.Tracer.create_arg`` with the common cases first: a proxy, a number or string, a tuple, a list,
        a dict with string keys (the base class's checks for parameters, tensors and constants all fail)."""
        kind = type(a)
        if kind in _PLAIN_ARGS:
            return a
        if isinstance(a, fx.Proxy):
            return a.node
        if kind is tuple:
            return tuple(self.create_arg(v) for v in a)
        if kind is list:
            return [self.create_arg(v) for v in a]
        if kind is dict and all(type(k) is str for k in a):
            return {k: self.create_arg(v) for k, v in a.items()}
        return super().create_arg(a)

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        root_fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        args = [self.proxy(a.node) if isinstance(a, fx.Proxy) else a for a in args]
        return root_fn, args

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return IterableProxy(node, self) if self.example_inputs is None else SizedProxy(node, self)

    def trace_module(self, root: nn.Module) -> fx.GraphModule:
        """Trace ``root`` into a GraphModule that shares its submodules and parameters."""
        self.scope_stack = []
        self.shape_values = None if self.example_inputs is None else ShapeValues(root, self.example_inputs)
        defaults = None if self.shape_values is None else self.shape_values.defaults()
        try:
            with (
                _without_symint_scan(),
                _opaque_autograd_functions(self),
                _module_state_kept(root, self.shape_values is not None),
                _traced_factories(self, self.shape_values is not None),
            ):
                graph = self.trace(root, concrete_args=defaults)
        finally:
            self.shape_values = None
        return graph_module(root, graph, root.__class__.__name__)


class _NoScan:
    """``torch.utils._pytree`` as ``torch.fx.graph`` sees it, whose ``tree_iter`` yields nothing."""

    def __init__(self, real: Any) -> None:
        self.real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real, name)

    @staticmethod
    def tree_iter(tree: Any, is_leaf: Any = None) -> Iterator[Any]:
        return iter(())


@contextlib.contextmanager
def _without_symint_scan() -> Iterator[None]:
    """``fx.Graph.create_node`` walks every call's arguments to warn about raw SymInts, which a symbolic trace
    never records (proxies and plain values only): the walk (a sixth of a small net's trace) is left out."""
    real = getattr(fx.graph, "pytree", None)
    if real is None or not hasattr(real, "tree_iter") or isinstance(real, _NoScan):
        yield
        return
    fx.graph.pytree = _NoScan(real)
    try:
        yield
    finally:
        fx.graph.pytree = real


_PLAIN_ARGS = frozenset({int, float, bool, str, type(None), type(...)})
_FACTORIES = ("ones", "zeros", "empty", "full", "rand", "randn")


@contextlib.contextmanager
def _traced_factories(tracer: fx.Tracer, active: bool) -> Iterator[None]:
    """``torch.ones(B, N, ...)`` with traced sizes records one call (torch's argument parser does not see
    proxies among the sizes of a factory function)."""
    if not active:
        yield
        return
    originals = {name: getattr(torch, name) for name in _FACTORIES}

    def traced(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            found: list[bool] = []
            fx.node.map_aggregate((args, kwargs), lambda a: found.append(isinstance(a, fx.Proxy)))
            if any(found):
                return tracer.create_proxy("call_function", fn, args, kwargs)
            return fn(*args, **kwargs)

        return call

    try:
        for name, fn in originals.items():
            setattr(torch, name, traced(fn))
        yield
    finally:
        for name, fn in originals.items():
            setattr(torch, name, fn)


def _holds_proxy(value: Any) -> bool:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return any(isinstance(v, fx.Proxy) for v in value)
    return isinstance(value, fx.Proxy)


@contextlib.contextmanager
def _module_state_kept(root: nn.Module, active: bool) -> Iterator[None]:
    """Module attributes a traced ``forward`` sets to traced values (a cache filled from a traced size, an
    entry of a cache dict) get their previous values back afterwards (removed when they are new)."""
    if not active:
        yield
        return
    saved = []
    for m in root.modules():
        before = dict(m.__dict__)
        contents = {k: type(v)(v) for k, v in before.items() if type(v) in (dict, list)}
        saved.append((m.__dict__, before, contents))
    try:
        yield
    finally:
        for attrs, before, contents in saved:
            for name in [k for k, v in attrs.items() if _holds_proxy(v)]:
                if name not in before:
                    del attrs[name]
                elif name in contents and attrs[name] is before[name]:  # the same dict or list, refilled
                    container = attrs[name]
                    container.clear()
                    if isinstance(container, dict):
                        container.update(contents[name])
                    else:
                        container.extend(contents[name])
                else:
                    attrs[name] = before[name]


def _opaque_call(cls: type) -> Any:
    """A function calling ``cls.apply``, named after ``cls`` (how the graph and the reports show it)."""

    def call(*args: Any, **kwargs: Any) -> Any:
        return cls.apply(*args, **kwargs)

    call.__name__ = call.__qualname__ = f"{cls.__name__}.apply"
    call.__module__ = cls.__module__
    return call


@contextlib.contextmanager
def _opaque_autograd_functions(tracer: fx.Tracer) -> Iterator[None]:
    """While tracing, ``Fn.apply`` on proxies of a Function defined outside torch records one opaque call."""
    function = torch.autograd.Function
    original = function.__dict__["apply"]

    def apply(cls: type, *args: Any, **kwargs: Any) -> Any:
        found: list[bool] = []
        fx.node.map_aggregate((args, kwargs), lambda a: found.append(isinstance(a, fx.Proxy)))
        if any(found) and not cls.__module__.startswith("torch"):
            return tracer.create_proxy("call_function", _opaque_call(cls), args, kwargs)
        return original.__func__(cls, *args, **kwargs)

    function.apply = classmethod(apply)
    try:
        yield
    finally:
        function.apply = original
