"""Channel counts kept in Python attributes and written into the traced graph as plain numbers.

``F.conv2d(x, self.weight, groups=self.groups)`` or ``F.layer_norm(x, (self.dim,))`` reach a symbolic trace
as literals: slimming would leave them at the dense width and the slim model would not run. After
propagation, :func:`freeze_attribute_literals` looks for literals that equal an ``int`` attribute of a module
the op runs in (one its own ``forward`` reads) and the size of a channel dim of an activation the op
reads or writes, and freezes those channels (the attribute cannot follow pruning). Attributes registered with
:func:`fxprune.groups.channel_constants.register_channel_constant` are updated by slimming instead and
are left alone. Exported graphs write every size as a literal, so they are not scanned.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import torch.fx as fx
from torch import nn

from .attr_constants import names_read_in_forward
from .attr_expressions import check_expressions
from .context import Unsupported, iter_labels, op_name
from .propagate import PropagationResult
from .registry import layer_args

__all__ = ["freeze_attribute_literals", "int_literals", "scope_attributes"]


def int_literals(value: Any) -> Iterator[int]:
    """Every int (not bool) in a node's arguments, inside lists, tuples and dicts too."""
    if isinstance(value, bool):
        return
    if isinstance(value, int):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from int_literals(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from int_literals(v)


def scope_attributes(model: nn.Module, node: fx.Node) -> dict[int, tuple[str, str]]:
    """``{value: (module, attribute)}`` of the int attributes of the modules ``node`` runs in that their own
    ``forward`` reads (``self.NAME`` in its source).

    Values up to 3 are left out: in a graph they are mostly dim indices (``mean((2, 3))``). A value two
    modules hold is taken from the innermost one (as ``attr_constants.find_attribute`` does).
    """
    scopes = [""] + [path for path, _ in (node.meta.get("nn_module_stack") or {}).values()]
    scopes.reverse()
    found: dict[int, tuple[str, str]] = {}
    for scope in scopes:
        try:
            m = model.get_submodule(scope)
        except AttributeError:
            continue
        read = names_read_in_forward(m)
        for attr, v in vars(m).items():
            if type(v) is int and v > 3 and attr in read:
                found.setdefault(v, (scope, attr))
    return found


def _layer_sizes(model: nn.Module, node: fx.Node) -> set[int]:
    """Literals the layer's own attributes explain (``F.layer_norm(x, self.normalized_shape, self.weight)``
    or ``F.conv2d(x, self.weight, ..., self.groups)`` inside a subclass's forward, timm's ``Conv2dSame``):
    slimming rewrites those attributes, so they follow."""
    spec = layer_args(op_name(node))
    if spec is None:
        return set()
    w = node.args[spec.weight] if len(node.args) > spec.weight else node.kwargs.get("weight")
    if not isinstance(w, fx.Node) or w.op != "get_attr":
        return set()
    try:
        owner = model.get_submodule(w.target.rpartition(".")[0])
    except AttributeError:
        return set()
    if isinstance(owner, nn.modules.conv._ConvNd):
        return {owner.groups}
    return set(owner.normalized_shape) if isinstance(owner, nn.LayerNorm) else set()


def freeze_attribute_literals(
    prop: PropagationResult, graph_module: fx.GraphModule, model: nn.Module
) -> None:
    """Freeze the channel dims whose size a traced literal from a module attribute pins (see module doc)."""
    check_expressions(prop, prop.unsupported)
    registered = {(m, a) for m, a, _ in prop.constants}
    table = prop.table
    for node in graph_module.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        literals = set(int_literals((node.args, node.kwargs)))
        if not literals:
            continue
        literals -= _layer_sizes(model, node)
        in_scope = scope_attributes(model, node).items()
        attrs = {v: ma for v, ma in in_scope if v in literals and ma not in registered}
        if not attrs:
            continue
        inputs = [a for a in node.all_input_nodes if a.op != "get_attr"]  # activations, not weights
        touched = [lab for a in inputs for lab in iter_labels(prop.labels.get(a))]
        touched += list(iter_labels(prop.labels.get(node)))
        for lab in touched:
            hit = attrs.get(len(lab))
            if hit is None or all(int(r) in table.frozen for r in np.unique(table.roots(lab))):
                continue
            module, attr = hit
            owner = f"{module}.{attr}" if module else attr
            reason = f"{owner} = {len(lab)} is written as a constant in forward"
            table.freeze(lab, f"{reason} ({op_name(node)} at {node.name})")
            prop.unsupported.append(Unsupported(node.name, op_name(node), module, reason))
