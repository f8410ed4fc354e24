"""The GraphModule of a symbolic trace, built without generating its code and with a cheap module skeleton.

``fx.GraphModule(root, graph)`` copies every module and attribute the graph names into a skeleton of empty
modules, each step through ``nn.Module.__getattr__``/``__setattr__``, and generates and compiles the graph's
Python code. The analysis interprets the graph node by node and never calls the module, so the code is
generated on the first call only (torch's lazy graph module), and the skeleton is built by writing the
modules' own dicts: the same tree of the same objects (plain ``nn.Module`` containers, the model's layers,
parameters and buffers with their persistence) in a third of the time (about a tenth of a small net's
capture).
"""

from __future__ import annotations

import torch
import torch.fx as fx
from torch import nn

__all__ = ["graph_module"]


def graph_module(root: nn.Module, graph: fx.Graph, name: str) -> fx.GraphModule:
    """``fx.GraphModule(root, graph, name)`` whose Python code is generated on its first call only."""
    try:
        from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module
        from torch.fx.graph_module import _copy_attr
    except ImportError:  # an older or newer torch without them
        return fx.GraphModule(root, graph, name)
    targets = [n.target for n in graph.nodes if n.op in ("get_attr", "call_module")]
    if not all(isinstance(t, str) for t in targets) or _registration_hooks():
        with _use_lazy_graph_module(True):
            return _make_graph_module(root, graph, name)
    with _use_lazy_graph_module(True):
        gm = _make_graph_module(root, fx.Graph(), name)
        skeleton = _Skeleton(root, gm)
        for target in targets:
            if not skeleton.install(target):
                _copy_attr(root, gm, target)
        gm.graph = graph
        if graph._tracer_cls and "<locals>" not in graph._tracer_cls.__qualname__:
            gm._tracer_cls = graph._tracer_cls
        if graph._tracer_extras:
            gm._tracer_extras = graph._tracer_extras
    return gm


class _Skeleton:
    """Installs targets into ``gm`` as ``torch.fx.graph_module._copy_attr`` does, each container path walked
    once. ``install`` returns False when a step is not a plain submodule, parameter or buffer: the caller
    then copies that target as torch does (the containers made so far are the ones torch makes)."""

    def __init__(self, root: nn.Module, gm: nn.Module) -> None:
        # container path -> (module of root, its copy in gm); None: a module installed there holds it all
        self.paths: dict[str, tuple[nn.Module, nn.Module] | None | bool] = {"": (root, gm)}

    def _pair(self, path: str) -> tuple[nn.Module, nn.Module] | None | bool:
        hit = self.paths.get(path, True)
        if hit is not True:
            return hit
        up, _, item = path.rpartition(".")
        pair = self._pair(up)
        if pair:
            src, dst = pair
            f = src._modules.get(item)
            if f is None or _taken(dst, item):
                pair = False
            elif dst._modules.get(item) is f:
                pair = None
            else:
                t = dst._modules.get(item)
                if t is None:
                    t = dst._modules[item] = nn.Module()
                pair = (f, t)
        self.paths[path] = pair
        return pair

    def install(self, target: str) -> bool:
        up, _, field = target.rpartition(".")
        pair = self._pair(up)
        if pair is None:
            return True  # a parent is installed already: it holds the target
        if pair is False or _taken(pair[1], field):
            return False
        src, dst = pair
        if field in src._modules:
            dst._modules[field] = src._modules[field]
            self.paths[target] = None  # (a container made there before is now out of the tree, as in torch)
        elif field in dst._modules:
            return False
        elif isinstance(src._parameters.get(field), nn.Parameter):
            dst._parameters[field] = src._parameters[field]
        elif isinstance(src._buffers.get(field), torch.Tensor):
            dst._buffers[field] = src._buffers[field]
            if field in src._non_persistent_buffers_set:
                dst._non_persistent_buffers_set.add(field)
            else:
                dst._non_persistent_buffers_set.discard(field)
        else:
            return False
        return True


def _taken(module: nn.Module, name: str) -> bool:
    """Whether ``name`` on ``module`` is something else than a submodule (an attribute, a method, a parameter
    or a buffer), where ``setattr`` would do more than write ``_modules``."""
    return (
        name in module.__dict__ or hasattr(type(module), name)
        or name in module._parameters or name in module._buffers
    )


def _registration_hooks() -> bool:
    """Whether global module, parameter or buffer registration hooks are set (``setattr`` would call them)."""
    from torch.nn.modules import module as torch_module

    names = (
        "_global_module_registration_hooks", "_global_parameter_registration_hooks",
        "_global_buffer_registration_hooks",
    )
    return any(getattr(torch_module, n, None) for n in names)
