"""Channel counts that a module reads from its own attributes: split sizes and slice bounds.

``torch.split(x, self.splits, 1)`` (mixed depthwise convs), ``torch.split(x, self.width, 1)`` (Res2Net),
``x.split((self.c, self.c), 1)`` and ``x[:, :self.out_chs]`` (GhostNet, DPN) reach a traced graph as
plain integers. This module reads such an integer back to the attribute it came from: an ``int`` (or a
list/tuple of ints) attribute of the module whose ``forward`` made the call, or of a module above it,
that holds that value and that the module's ``forward`` reads (``self.NAME`` in its source). An integer
two attributes could explain stays a constant (the channels it sizes freeze).

A found attribute makes the size follow pruning: the handler records a channel constant whose value
after slimming is the number of kept channels among the labels it sizes (``fxprune.slim`` writes it;
an element of a list attribute is written as ``NAME[i]``). Attributes the source does not name (set
through ``setattr``, computed in another method) still need ``register_channel_constant``.
"""

from __future__ import annotations

import ast
import functools
import inspect
import re
import textwrap
from collections.abc import Sequence

import numpy as np
from torch import nn

from .channel_constants import find_constant
from .context import OpContext

__all__ = [
    "AttrRef",
    "check_shared_attributes",
    "find_attribute",
    "find_sequence",
    "find_sizes",
    "forward_function",
    "names_read_in_forward",
    "record_constants",
    "slice_refs",
    "split_refs",
]

AttrRef = tuple[str, str]  # (module name, attribute or ``attribute[i]``)


def forward_function(m: nn.Module):
    """The function ``m(...)`` runs: an instance's own ``forward`` (``self.forward = self.forward_split_cat``
    in ``__init__``, as in timm's FasterNet) or its class's."""
    own = vars(m).get("forward")
    return getattr(own, "__func__", own) if callable(own) else type(m).forward


@functools.cache
def _names_read(fn) -> frozenset[str]:
    try:
        src = inspect.getsource(fn)
    except (OSError, TypeError):
        return frozenset()
    return frozenset(re.findall(r"\bself\.([A-Za-z_]\w*)", src))


def names_read_in_forward(cls: type | nn.Module) -> frozenset[str]:
    """``NAME`` for every ``self.NAME`` in the source of the forward of ``cls`` (a class, or a module: then
    its own ``forward`` when the instance assigns one), empty when the source is unavailable."""
    return _names_read(forward_function(cls) if isinstance(cls, nn.Module) else cls.forward)


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_attributes(m: nn.Module) -> dict[str, int | tuple[int, ...]]:
    """The module's int and int-sequence attributes that its forward reads."""
    read = names_read_in_forward(m)
    out: dict[str, int | tuple[int, ...]] = {}
    for name, v in vars(m).items():
        if name.startswith("_") or name not in read:
            continue
        if _is_int(v):
            out[name] = v
        elif isinstance(v, (list, tuple)) and v and all(_is_int(e) for e in v):
            out[name] = tuple(v)
    return out


def _scopes(model: nn.Module | None, scope: str) -> list[tuple[str, nn.Module]]:
    """``scope`` and the modules above it, innermost first."""
    if model is None:
        return []
    parts = scope.split(".") if scope else []
    found = []
    for k in range(len(parts), -1, -1):
        name = ".".join(parts[:k])
        try:
            found.append((name, model.get_submodule(name)))
        except AttributeError:
            continue
    return found


def find_attribute(ctx: OpContext, value: int) -> AttrRef | None:
    """The registered or forward-read int attribute equal to ``value`` nearest to the op's module.

    None when no attribute, or more than one in the same module, holds ``value``.
    """
    registered = find_constant(ctx.model, ctx.module_name, value)
    if registered is not None:
        return registered
    for name, m in _scopes(ctx.model, ctx.module_name):
        hits = [a for a, v in _int_attributes(m).items() if v == value]
        if len(hits) == 1:
            return name, hits[0]
        if hits:
            return None  # ambiguous: leave it a constant
    return None


def find_sequence(ctx: OpContext, sizes: Sequence[int]) -> list[AttrRef] | None:
    """``NAME[i]`` for each size when one int-sequence attribute nearest to the op equals ``sizes``
    (MetaFormer's ``self.scale.view(self.shape)``); None when none does, or several do."""
    sizes = tuple(int(s) for s in sizes)
    for name, m in _scopes(ctx.model, ctx.module_name):
        hits = [a for a, v in _int_attributes(m).items() if v == sizes]
        if len(hits) == 1:
            return [(name, f"{hits[0]}[{i}]") for i in range(len(sizes))]
        if hits:
            return None
    return None


def find_sizes(ctx: OpContext, sizes: Sequence[int]) -> list[AttrRef | None]:
    """One attribute per size: a sequence attribute equal to ``sizes`` (``NAME[i]``), else each size alone."""
    found = find_sequence(ctx, sizes) if len(sizes) > 1 else None
    return found if found is not None else [find_attribute(ctx, s) for s in sizes]


def split_refs(ctx: OpContext, sections: object, sizes: Sequence[int]) -> list[AttrRef | None]:
    """The attribute behind each piece of ``split(x, sections)`` (None: a piece whose size is a literal).

    ``split(x, self.width)`` names one attribute for every piece (the pieces then stay equal).
    """
    if _is_int(sections):
        ref = find_attribute(ctx, sections)
        return [ref if ref is not None and len(set(sizes)) == 1 else None for _ in sizes]
    if isinstance(sections, (list, tuple)) and all(_is_int(s) for s in sections):
        refs = find_sizes(ctx, sections)
        return refs if all(r is not None for r in refs) else _split_from_source(ctx, sections) or refs
    return [None] * len(sizes)


@functools.cache
def _split_lists(fn) -> tuple[tuple[str, ...], ...]:
    """The attribute names of every ``split([self.A, self.B, ...], ...)`` size list in ``fn``'s source."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
    except (OSError, TypeError, SyntaxError):
        return ()
    found = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
            continue
        if node.func.attr not in ("split", "split_with_sizes"):
            continue
        for arg in node.args[:2]:
            if isinstance(arg, (ast.List, ast.Tuple)) and arg.elts and all(_self_name(e) for e in arg.elts):
                found.append(tuple(_self_name(e) for e in arg.elts))
    return tuple(found)


def _self_name(node: ast.expr) -> str | None:
    ok = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    return node.attr if ok else None


def _split_from_source(ctx: OpContext, sections: Sequence[int]) -> list[AttrRef] | None:
    """The attributes a split's size list names in the source of the op's module's ``forward``
    (``split([self.key_dim, self.key_dim, self.val_dim], 1)`` where ``key_dim == val_dim``: the values
    alone cannot say which is which). None unless exactly one such list has these values."""
    if ctx.model is None:
        return None
    try:
        m = ctx.model.get_submodule(ctx.module_name)
    except AttributeError:
        return None
    values = _int_attributes(m)
    hits = {
        names
        for names in _split_lists(forward_function(m))
        if [values.get(n) for n in names] == [int(s) for s in sections]
    }
    return [(ctx.module_name, n) for n in hits.pop()] if len(hits) == 1 else None


def slice_refs(ctx: OpContext, idx: slice, width: int) -> list[tuple[AttrRef, int]] | None:
    """``(attribute, bound)`` for each bound of a channel slice that must follow pruning.

    None when a bound is negative, stepped or a literal no attribute explains. A bound at or past the
    width needs no attribute (it stays past the end after pruning); one that equals the width follows it.
    """
    if idx.step not in (None, 1):
        return None
    start, stop = idx.start, idx.stop
    refs = []
    if start is None or start == 0:
        start = None
    if _is_int(stop) and stop >= width:
        whole = find_attribute(ctx, stop) if stop == width else None
        refs += [(whole, width)] if whole is not None else []  # kept up to date, not required
        stop = None
    for b in (start, stop):
        if b is None:
            continue
        if not _is_int(b) or not 0 < b < width:
            return None
        ref = find_attribute(ctx, b)
        if ref is None:
            return None
        refs.append((ref, b))
    return refs


def record_constants(ctx: OpContext, records: list[tuple[str, str, object]]) -> None:
    """Record ``(module, attribute, labels)`` of one op as channel constants.

    Whether one attribute that sizes channels of several ops can follow them is decided after
    propagation (:func:`check_shared_attributes`): ops later in the graph may still couple them.
    """
    ctx.constants.extend(records)


def check_shared_attributes(prop) -> None:
    """Make every attribute that sizes channels of several ops keep one count after slimming.

    Counts are equal when the channels are the same after propagation, or when the pieces must stay
    equal (``equal_parts``: ``split(x, (self.c, self.c))``). Otherwise, where every op sizes the same
    number of channels (one ``self.head_dim`` read by the q, k and v views; one ``self.key_dim`` read by
    the split of every head), their channels are tied position by position, so that they lose the same
    ones and the attribute takes their common kept count; channels of different counts freeze (the
    attribute would need several values at once).

    The check runs once every coupling is known: DPN's ``x_s[:, :self.num_1x1_c]`` and
    ``x[:, :self.num_1x1_c]`` slice two tensors that ``x_s1 + out1`` couples only after both slices.
    """
    table = prop.table
    by_attr: dict[tuple[str, str], list] = {}
    for module, attr, lab in prop.constants:
        by_attr.setdefault((module, attr), []).append(lab)
    if all(len(labs) < 2 for labs in by_attr.values()):
        return
    parent: dict[tuple, tuple] = {}

    def find(k: tuple) -> tuple:
        while parent.setdefault(k, k) != k:
            k = parent[k]
        return k

    def key(lab) -> tuple:
        return tuple(np.sort(table.roots(lab)).tolist())

    for kind, pieces, _ in prop.constraints:
        if kind == "equal_parts":
            first = find(key(pieces[0]))
            for p in pieces[1:]:
                parent[find(key(p))] = first
    for (module, attr), labs in by_attr.items():
        distinct = {find(key(lab)): lab for lab in labs}
        if len(distinct) < 2:
            continue
        if len({len(lab) for lab in distinct.values()}) == 1:
            first, *rest = distinct.values()
            for lab in rest:
                table.union(np.asarray(first), np.asarray(lab))
            continue
        owner = f"{module}.{attr}" if module else attr
        for lab in labs:
            table.freeze(lab, f"{owner} sizes channels of several ops")
