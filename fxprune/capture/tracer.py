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
from collections.abc import Iterable, Iterator
from typing import Any

import torch
import torch.fx as fx
from torch import nn

__all__ = ["LeafTracer"]

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


class LeafTracer(fx.Tracer):
    """Symbolic tracer keeping ``torch.nn`` layers and user-declared modules as leaves.

    ``leaf_modules`` holds module types or glob patterns on qualified module names. The tracer records
    the stack of modules being traced so that a failure can name the module that blocked it.
    """

    def __init__(self, leaf_modules: Iterable[type | str] = ()):
        super().__init__()
        leaves = list(leaf_modules)
        self.leaf_types = tuple(t for t in leaves if isinstance(t, type))
        self.leaf_patterns = [p for p in leaves if isinstance(p, str)]
        self.scope_stack: list[str] = []

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if self.leaf_types and isinstance(m, self.leaf_types):
            return True
        if any(fnmatch.fnmatchcase(module_qualified_name, p) for p in self.leaf_patterns):
            return True
        return super().is_leaf_module(m, module_qualified_name)

    def call_module(self, m: nn.Module, forward: Any, args: tuple, kwargs: dict) -> Any:
        self.scope_stack.append(self.path_of_module(m))
        try:
            out = super().call_module(m, forward, args, kwargs)
        except Exception:
            raise  # keep the stack as it was when tracing failed
        self.scope_stack.pop()
        return out

    def create_args_for_root(self, root_fn: Any, is_module: bool, concrete_args: Any = None) -> Any:
        root_fn, args = super().create_args_for_root(root_fn, is_module, concrete_args)
        args = [IterableProxy(a.node, self) if isinstance(a, fx.Proxy) else a for a in args]
        return root_fn, args

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return IterableProxy(node, self)

    def trace_module(self, root: nn.Module) -> fx.GraphModule:
        """Trace ``root`` into a GraphModule that shares its submodules and parameters."""
        self.scope_stack = []
        with _opaque_autograd_functions(self):
            graph = self.trace(root)
        return _graph_module(root, graph, root.__class__.__name__)


def _graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """``fx.GraphModule(root, graph, name)`` whose Python code is generated on its first call only.

    The analysis interprets the graph node by node and never calls the module, so the code generation
    and compilation (a fifth of the capture on a ResNet-152) are skipped; calling the module works as usual.
    """
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
    except ImportError:  # an older or newer torch without it
        return fx.GraphModule(root, graph, name)
    with _use_lazy_graph_module(True):
        return _make_graph_module(root, graph, name)


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
