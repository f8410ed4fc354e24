"""One choice per model between whole heads and head channels, where views tie them to the block width.

A head size written ``C // self.num_heads`` (``C`` the block width) ties the width to the heads: following the
head size ties channel ``d`` of every head-sized part of the width to head channel ``d``; following whole
heads ties each part to its head. Blocks that need whole heads (cross-covariance attention softmaxes over
the head channels: XCiT, DaViT's channel attention) and blocks that follow the head size on the same width
together leave one atom: the width cannot shrink. :func:`whole_heads_everywhere` says when a model has a
view of the first kind; such views then follow whole heads in every block, and the ties agree.

A view that follows the head size by default (:mod:`.reshape`) notes it with :func:`note_head_size`. Where
the head size cannot follow after all (rotary embeddings split it with constant sizes and multiply it with
position tables), its channels end frozen; :func:`retry_whole_heads` then marks those views, and the next
propagation of the graph follows their whole heads instead (:func:`whole_heads_forced`).
"""

from __future__ import annotations

import weakref

import numpy as np
import torch.fx as fx
from torch import nn

from .attention import head_size_fixed
from .context import op_name, scope_of
from .sizes import view_size_args
from .slots import SlotTable
from .view_sources import view_attributes, view_producer

__all__ = [
    "forget_head_sizes",
    "note_head_size",
    "retry_whole_heads",
    "whole_heads_everywhere",
    "whole_heads_forced",
]

_SEEN: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_HEAD_SIZES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> {view name: head labels}
_FORCED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # graph -> view names following heads


def note_head_size(
    node: fx.Node, table: SlotTable, labels: np.ndarray, attribute: tuple[str, str] | None = None
) -> None:
    """Record that view ``node`` follows its head size (the labels of that dim, slots of ``table``) where it
    could follow whole heads instead; ``attribute``: the ``(module, NAME)`` the head size is written from."""
    _HEAD_SIZES.setdefault(node.graph, {})[node.name] = (labels, attribute, table)


def whole_heads_forced(node: fx.Node) -> bool:
    """Whether view ``node`` must follow whole heads (its head size froze on an earlier propagation)."""
    return node.name in _FORCED.get(node.graph, ())


def retry_whole_heads(graph: fx.Graph, table: SlotTable) -> bool:
    """After a propagation of ``graph``: mark the views whose head size ended wholly frozen (in ``table``)
    to follow whole heads; True when there are new ones (propagate again). The notes are cleared.

    Views whose head size is written from the same attribute go together (the q, k and v views of one
    ``self.head_dim``): one that kept following the head size would write the attribute the others read.
    """
    noted = {n: (lab, attr) for n, (lab, attr, t) in _HEAD_SIZES.pop(graph, {}).items() if t is table}
    frozen = table.frozen
    new = {
        name
        for name, (lab, _) in noted.items()
        if all(int(r) in frozen for r in np.unique(table.roots(lab)))
    }
    shared = {noted[name][1] for name in new} - {None}
    new |= {name for name, (_, attribute) in noted.items() if attribute in shared}
    new -= _FORCED.get(graph, set())
    if new:
        _FORCED.setdefault(graph, set()).update(new)
    return bool(new)


def forget_head_sizes(graph: fx.Graph) -> None:
    """Drop the head-size notes of the last propagation of ``graph`` (nothing is retried after it)."""
    _HEAD_SIZES.pop(graph, None)


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
        sources = view_attributes(_module(model, node), sizes, view_producer(node, scope_of(node)))
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
