"""One choice per model between whole heads and head channels, where views tie them to the block width.

A head size written ``C // self.num_heads`` (``C`` the block width) ties the width to the heads: following the
head size ties channel ``d`` of every head-sized part of the width to head channel ``d``; following whole
heads ties each part to its head. Blocks that need whole heads (cross-covariance attention softmaxes over
the head channels: XCiT, DaViT's channel attention) and blocks that follow the head size on the same width
together leave one atom: the width cannot shrink. :func:`whole_heads_everywhere` says when a model has a
view of the first kind; such views then follow whole heads in every block, and the ties agree.
"""

from __future__ import annotations

import weakref

import torch.fx as fx
from torch import nn

from .attention import head_size_fixed
from .context import op_name, scope_of
from .sizes import view_size_args
from .view_sources import view_attributes

__all__ = ["whole_heads_everywhere"]

_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _module(model: nn.Module, node: fx.Node) -> nn.Module | None:
    if not node.meta.get("nn_module_stack"):
        return None
    try:
        return model.get_submodule(scope_of(node))
    except AttributeError:
        return None


def _fixed_width_heads(graph: fx.Graph, model: nn.Module) -> bool:
    for node in graph.nodes:
        if node.op != "call_method" or op_name(node) not in ("view", "reshape"):
            continue
        sizes = view_size_args(node)
        sources = view_attributes(_module(model, node), sizes)
        for j, s in enumerate(sources or ()):
            if s.kind == "divided" and head_size_fixed(node, j, len(sizes)):
                return True
    return False


def whole_heads_everywhere(graph: fx.Graph, model: nn.Module | None) -> bool:
    """Whether some view's head size, read from the block width (``C // self.num_heads``), must keep its
    width (:func:`.attention.head_size_fixed`); computed once per graph."""
    if model is None:
        return False
    found = _SEEN.get(graph)
    if found is None:
        found = _SEEN[graph] = _fixed_width_heads(graph, model)
    return found
