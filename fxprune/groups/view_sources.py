"""Which attribute wrote each size of a view: ``reshape(B, N, 3, self.num_heads, self.head_dim)``.

A traced graph writes ``self.num_heads`` as a plain number. When that number also appears as a literal in
the same call (DeiT-Tiny has 3 heads: ``reshape(B, N, 3, 3, 64)``), the value alone cannot say which
size is the head count. This module reads the ``forward`` source of the module that made the call and
finds the ``reshape``/``view`` calls with as many sizes as the graph's; each size is a literal, an
attribute (``self.NAME``), arithmetic over attributes, a run-time size divided by an attribute
(``C // self.num_heads``) or something else computed at run time. A call matches when its literals
and attributes hold the graph's values at the same positions and its run-time sizes are run-time in
the graph too. When every match names the same attributes at the same positions,
:func:`view_attributes` returns them.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap
from collections.abc import Sequence

import numpy as np
import torch.fx as fx
from torch import nn

from .context import OpContext, scope_of
from .labels import Labels

__all__ = ["SizeSource", "freeze_runtime_literals", "runtime_sizes", "view_attributes", "view_producer"]

_VIEWS = ("reshape", "view")


@functools.cache
def _view_calls(cls: type, whole_class: bool = False) -> tuple[tuple[ast.expr, ...], ...]:
    """The size arguments of every ``x.reshape(...)``/``x.view(...)``/``torch.reshape(x, ...)`` in
    ``cls.forward`` (a single tuple or list argument is unpacked); with ``whole_class``, in every method of
    ``cls`` (``forward`` may call a method of its own that makes the view)."""
    return tuple(args for args, _ in _view_sites(cls, whole_class))


def _receiver(func: ast.Attribute) -> str | None:
    """``NAME`` when the tensor viewed is the output of a submodule call, ``self.NAME(...).view(...)``."""
    value = func.value
    return _self_attr(value.func) if isinstance(value, ast.Call) else None


@functools.cache
def _view_sites(cls: type, whole_class: bool = False) -> tuple[tuple[tuple[ast.expr, ...], str | None], ...]:
    """The size arguments of each view call (:func:`_view_calls`) with the submodule whose output it views,
    when the source says (:func:`_receiver`)."""
    try:
        source = inspect.getsource(cls if whole_class else cls.forward)
        tree = ast.parse(textwrap.dedent(source))
    except (OSError, TypeError, SyntaxError):
        return ()
    calls = []
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)) or node.keywords:
            continue
        if node.func.attr not in _VIEWS:
            continue
        args = list(node.args)
        if isinstance(node.func.value, ast.Name) and node.func.value.id == "torch":
            args = args[1:]  # torch.reshape(x, shape)
        if len(args) == 1 and isinstance(args[0], (ast.Tuple, ast.List)):
            args = list(args[0].elts)
        if args and not any(isinstance(a, ast.Starred) for a in args):
            calls.append((tuple(args), _receiver(node.func)))
    return tuple(calls)


def _self_attr(node: ast.expr) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return node.attr
    return None


class SizeSource(tuple):
    """``(kind, name)``: ``("literal", "")``, ``("attr", NAME)``, ``("expression", "")`` (arithmetic over
    attributes and literals), ``("divided", NAME)`` (a run-time size divided by ``self.NAME``) or
    ``("runtime", "")``."""

    @property
    def kind(self) -> str:
        return self[0]

    @property
    def name(self) -> str:
        return self[1]


def _constant_expression(node: ast.expr) -> bool:
    """Arithmetic over ``self.NAME`` and int literals only (a constant in the graph)."""
    if isinstance(node, ast.BinOp):
        return _constant_expression(node.left) and _constant_expression(node.right)
    return _self_attr(node) is not None or (isinstance(node, ast.Constant) and type(node.value) is int)


def _source(node: ast.expr) -> SizeSource:
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return SizeSource(("literal", ""))
    attr = _self_attr(node)
    if attr is not None:
        return SizeSource(("attr", attr))
    if _constant_expression(node):
        return SizeSource(("expression", ""))
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.FloorDiv) and _self_attr(node.right):
        return SizeSource(("divided", _self_attr(node.right)))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return SizeSource(("literal", ""))  # -1
    return SizeSource(("runtime", ""))


def _matches(sources: Sequence[SizeSource], call: Sequence[ast.expr], sizes: Sequence, m: nn.Module) -> bool:
    for src, node, size in zip(sources, call, sizes):
        constant = isinstance(size, int)
        if src.kind == "literal":
            value = node.value if isinstance(node, ast.Constant) else -1
            if not constant or value != size:
                return False
        elif src.kind == "attr":
            if not constant or getattr(m, src.name, None) != size:
                return False
        elif src.kind == "expression":
            if not constant:
                return False
        elif constant:  # a size computed at run time in the source is a graph node
            return False
    return True


def view_attributes(
    m: nn.Module | None, sizes: Sequence, producer: str | None = None
) -> list[SizeSource] | None:
    """The source of each size of a view made in ``m.forward`` (``sizes``: the graph's arguments, ints
    for constants), or None when no call in the source matches, or matches disagree.

    ``producer``, the submodule of ``m`` (relative name) whose output the graph's view reads, settles
    matches that disagree: ``self.q_proj(x).view(B, N, self.num_heads, d)`` and
    ``self.k_proj(x).view(B, N, self.num_kv_heads, d)`` with equal head counts are told apart by the
    module they view; a call that views something else (``x.view(...)``) is kept.
    """
    if m is None:
        return None
    found: dict[tuple, set[str | None]] = {}
    for call, receiver in _view_sites(type(m)):
        if len(call) != len(sizes):
            continue
        sources = [_source(a) for a in call]
        if _matches(sources, call, sizes, m):
            found.setdefault(tuple(sources), set()).add(receiver)
    if len(found) > 1 and producer is not None:
        found = {s: r for s, r in found.items() if any(_made_by(x, producer) for x in r)}
    return [SizeSource(s) for s in next(iter(found))] if len(found) == 1 else None


def _made_by(receiver: str | None, producer: str) -> bool:
    return receiver is None or producer == receiver or producer.startswith(receiver + ".")


def view_producer(node: fx.Node, module_name: str) -> str | None:
    """The submodule of ``module_name`` (relative name) whose output a view node reads, if any."""
    x = node.args[0] if node.args else None
    if not isinstance(x, fx.Node):
        return None
    path = x.target if x.op == "call_module" else scope_of(x)
    prefix = module_name + "." if module_name else ""
    if not isinstance(path, str) or not path.startswith(prefix) or path == prefix:
        return None
    return path[len(prefix) :]


def runtime_sizes(m: nn.Module | None, sizes: Sequence) -> dict[int, set[int]]:
    """For a view of an exported graph (every size a number): ``{position: factors}`` of the sizes that some
    ``reshape``/``view`` call in ``type(m)``'s methods computes at run time: factor 1 for a size read as is
    (``reshape(B, N, C)``), ``self.NAME`` for one divided by it (``C // self.num_heads``), so that the
    run-time value was ``size * factor``. A call matches when its literals and attributes hold the graph's
    values at the same positions; the positions of every match are kept (a size some call may compute at
    run time is taken as computed). Base classes' methods count too (a subclass may inherit ``forward``)."""
    found: dict[int, set[int]] = {}
    if m is None:
        return found
    classes = [c for c in type(m).__mro__ if issubclass(c, nn.Module) and c is not nn.Module]
    for call in [call for c in classes for call in _view_calls(c, True)]:
        if len(call) != len(sizes):
            continue
        sources = [_source(a) for a in call]
        exported = [s if s.kind in ("literal", "attr") else SizeSource(("expression", "")) for s in sources]
        if not _matches(exported, call, sizes, m):
            continue
        for j, src in enumerate(sources):
            if src.kind == "runtime":
                found.setdefault(j, set()).add(1)
            elif src.kind == "divided" and type(getattr(m, src.name, None)) is int:
                found.setdefault(j, set()).add(getattr(m, src.name))
    return found


def freeze_runtime_literals(ctx: OpContext, sizes: Sequence, out: Labels) -> None:
    """A view of an exported graph whose number was computed at run time from a channel width.

    The slim model runs its own ``forward``, which reads the width again (``C // self.num_heads`` of the
    block input), while the view's other sizes stay as written: the layers of the view's module (and its
    submodules) with a dim of that width freeze it, and so does the view's output dim there, unless they
    already go together (the width follows that dim). Sizes read as is count only at a channel dim of the
    output (a batch or token count is not a width)."""
    if not ctx.graph_is_export or ctx.model is None:
        return
    try:
        found = runtime_sizes(ctx.model.get_submodule(ctx.module_name), sizes)
    except AttributeError:
        return
    prefix = ctx.module_name + "." if ctx.module_name else ""
    for j, factors in found.items():
        target = out.get(j)
        for factor in factors:
            if type(sizes[j]) is not int or sizes[j] < 2 or (factor == 1 and target is None):
                continue
            width = sizes[j] * factor
            followed = set(ctx.table.roots(target).tolist()) if target is not None else set()
            reason = f"{ctx.where}: size {sizes[j]} computed at run time from a width of {width}"
            for blk in ctx.table.blocks:
                if blk.size != width or not (blk.module == ctx.module_name or blk.module.startswith(prefix)):
                    continue
                if not set(ctx.table.roots(blk.slots).tolist()) <= followed:
                    ctx.table.freeze(blk.slots, reason)
                    if target is not None:
                        ctx.table.freeze(np.asarray(target), reason)
