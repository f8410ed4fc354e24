"""Channel counts written as sums of module attributes: ``self.key_dim * 2 + self.head_dim``.

ultralytics' PSA attention views its ``qkv`` output as ``(B, self.num_heads, self.key_dim * 2 +
self.head_dim, N)`` and splits it into ``[self.key_dim, self.key_dim, self.head_dim]``. The view size
reaches the traced graph as one number (128). It follows pruning by itself (forward recomputes it from
the attributes), provided every attribute in it is updated to the kept count of the channels it sizes.

:func:`find_expression` reads such a number back to an expression in the source of the module's
``forward``: a sum of int attributes with positive integer coefficients (``+``, ``-``, ``*``, ``//`` over
``self.NAME`` and integer literals, no constant term). The view then treats that size as one that
follows the channels; :func:`check_expressions` (after propagation) keeps it only where the channels
the size covers are exactly the pieces sized by those attributes elsewhere (``coefficient`` pieces per
attribute, each recorded as a channel constant, so slimming writes it) and freezes them otherwise.
"""

from __future__ import annotations

import ast
import functools
import inspect
import textwrap

import numpy as np

from .attr_constants import AttrRef, forward_function, record_constants
from .context import OpContext, Unsupported

__all__ = [
    "EXPRESSION",
    "check_expressions",
    "find_division",
    "find_expression",
    "find_remainder",
    "follow_divided_split",
]

EXPRESSION = "attribute_expression"  # constraint kind; payload (labels, module, coefficients, node name)
_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b,
        ast.FloorDiv: lambda a, b: a // b}  # fmt: skip


@functools.cache
def _expressions(forward) -> tuple[ast.expr, ...]:
    """Every arithmetic expression over ``self.NAME`` and int literals in the source of ``forward``."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(forward)))
    except (OSError, TypeError, SyntaxError):
        return ()
    return tuple(n for n in ast.walk(tree) if isinstance(n, ast.BinOp) and _names(n) is not None)


def _names(node: ast.expr) -> frozenset[str] | None:
    """The attributes an expression reads, None when it reads anything but ``self.NAME`` and ints."""
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return frozenset()
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        return frozenset([node.attr])
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        left, right = _names(node.left), _names(node.right)
        return None if left is None or right is None else left | right
    return None


def _evaluate(node: ast.expr, values: dict[str, int]) -> int:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Attribute):
        return values[node.attr]
    return _OPS[type(node.op)](_evaluate(node.left, values), _evaluate(node.right, values))


def _linear(node: ast.expr, values: dict[str, int]) -> tuple[int, dict[str, int]] | None:
    """``(value, {attribute: coefficient})`` when the expression is a sum of attributes with positive
    integer coefficients and no constant term (checked by moving each attribute by 1 and 2)."""
    try:
        base = _evaluate(node, values)
        coefs = {}
        for name in sorted(_names(node)):
            one = _evaluate(node, {**values, name: values[name] + 1}) - base
            two = _evaluate(node, {**values, name: values[name] + 2}) - base
            if one <= 0 or two != 2 * one:
                return None
            coefs[name] = one
    except (KeyError, ZeroDivisionError):
        return None
    if not coefs or base != sum(c * values[n] for n, c in coefs.items()):
        return None
    return base, coefs


def find_expression(ctx: OpContext, value: int) -> dict[str, int] | None:
    """``{attribute: coefficient}`` of the one attribute expression in the op's module's ``forward`` that
    equals ``value`` (a single attribute with coefficient 1 is left to :mod:`.attr_constants`)."""
    m, values = _module_and_ints(ctx)
    if m is None:
        return None
    found = []
    for node in _expressions(forward_function(m)):
        hit = _linear(node, values)
        if hit is not None and hit[0] == value and (len(hit[1]) > 1 or set(hit[1].values()) != {1}):
            found.append(hit[1])
    distinct = {tuple(sorted(c.items())) for c in found}
    return found[0] if len(distinct) == 1 else None


def _module_and_ints(ctx: OpContext):
    if ctx.model is None:
        return None, {}
    try:
        m = ctx.model.get_submodule(ctx.module_name)
    except AttributeError:
        return None, {}
    return m, {k: v for k, v in vars(m).items() if type(v) is int}


def _self_attr(node: ast.expr) -> str | None:
    ok = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"
    return node.attr if ok else None


def find_division(ctx: OpContext, value: int, pieces: int, width: int) -> AttrRef | None:
    """``(module, NAME)`` when the op's module's ``forward`` writes ``self.NAME // D`` (``D`` an int
    literal or ``self.OTHER``) equal to ``value``, with ``D == pieces`` and ``NAME`` holding all ``width``
    channels (``x.split(self.expand_chs // 2, 1)`` in timm's CSP stages,
    ``self.in_channels // self.num_paths`` in selective-kernel convs). None when no such expression, or
    more than one attribute, explains it."""
    m, values = _module_and_ints(ctx)
    found = set()
    for node in _expressions(forward_function(m)) if m is not None else ():
        name = _self_attr(node.left)
        if not isinstance(node.op, ast.FloorDiv) or name is None:
            continue
        d = node.right
        div = d.value if isinstance(d, ast.Constant) else values.get(_self_attr(d) or "")
        if values.get(name) == width == value * pieces and div == pieces:
            found.add(name)
    return (ctx.module_name, found.pop()) if len(found) == 1 else None


def find_remainder(ctx: OpContext, value: int, width: int, others: list[str]) -> AttrRef | None:
    """``(module, TOTAL)`` when the op's module's ``forward`` writes ``self.TOTAL - self.A - ...`` equal to
    ``value``, with ``TOTAL`` holding all ``width`` channels and ``A, ...`` the attributes that size the
    other pieces (SHViT's ``split(x, [self.pdim, self.dim - self.pdim])``): writing ``TOTAL`` as the kept
    total makes the remainder follow. None when no such expression, or more than one, explains it."""
    m, values = _module_and_ints(ctx)
    found = set()
    for node in _expressions(forward_function(m)) if m is not None else ():
        names = _names(node)
        total = [n for n in names if values.get(n) == width and n not in others]
        if len(total) != 1 or names != {total[0], *others}:
            continue
        try:
            base = _evaluate(node, values)
            moved = {n: _evaluate(node, {**values, n: values[n] + 1}) - base for n in names}
        except (KeyError, ZeroDivisionError):
            continue
        if base == value and moved == {total[0]: 1, **{o: -1 for o in others}}:
            found.add(total[0])
    return (ctx.module_name, found.pop()) if len(found) == 1 else None


def follow_divided_split(
    ctx: OpContext, a: np.ndarray, sections: object, sizes: list, parts: list, dim: int
) -> bool:
    """``split(x, self.NAME // n)`` into ``n`` equal pieces that together are ``NAME``'s channels: the pieces
    follow pruning and stay equal, ``NAME`` is written as their total after slimming (so forward computes
    the slim piece size). False, with nothing recorded, when the size is not such an expression."""
    if type(sections) is not int or len(sizes) < 2 or len(set(sizes)) != 1:
        return False
    ref = find_division(ctx, sections, len(sizes), len(a))
    if ref is None:
        return False
    bounds = np.cumsum([0, *sizes])
    pieces = [a[s:e] for s, e in zip(bounds[:-1], bounds[1:])]
    for p, piece in zip(parts, pieces):
        p[dim] = piece
    record_constants(ctx, [(*ref, a)])
    ctx.constraints.append(("equal_parts", pieces, ctx.where))
    return True


def check_expressions(prop, unsupported: list[Unsupported]) -> None:
    """Freeze the channels of every followed expression whose attributes do not each size
    ``coefficient`` of its pieces (channel constants recorded by other ops, such as the split after it)."""
    table = prop.table
    for kind, payload, where in prop.constraints:
        if kind != EXPRESSION:
            continue
        labels, module, coefs, node = payload
        roots = table.roots(labels)
        pieces = [
            (attr, table.roots(lab))
            for mod, attr, lab in prop.constants
            if mod == module and attr in coefs and np.isin(table.roots(lab), roots).all()
        ]
        counts = {a: sum(1 for p, _ in pieces if p == a) for a in coefs}
        covered = np.sort(np.concatenate([r for _, r in pieces])) if pieces else np.zeros(0, dtype=np.int64)
        if counts == coefs and np.array_equal(covered, np.sort(roots)):
            continue
        if not pieces and _follow_equal_parts(prop, roots, module, coefs):
            continue
        owner = f"{module}." if module else ""
        terms = " + ".join(f"{c}*{owner}{a}" if c != 1 else f"{owner}{a}" for a, c in coefs.items())
        reason = f"size {terms} not followed by the pieces its attributes size"
        table.freeze(labels, f"{where}: {reason}")
        unsupported.append(Unsupported(node, "view", module, reason))


def _follow_equal_parts(prop, roots: np.ndarray, module: str, coefs: dict[str, int]) -> bool:
    """``k * self.NAME`` whose channels a ``chunk(k)`` cuts into equal pieces that cover them exactly
    (MaxViT's ``view(B, -1, self.num_heads, self.dim_head * 3).chunk(3, dim=3)``): the size follows, and
    ``NAME`` is recorded as a channel constant sized by one piece (the pieces keep equal counts). False
    when the expression has several attributes, no such chunk exists, or ``NAME`` sizes other channels."""
    if len(coefs) != 1:
        return False
    (attr, k), table = next(iter(coefs.items())), prop.table
    if any(mod == module and a == attr for mod, a, _ in prop.constants):
        return False
    want = np.sort(roots)
    for kind, pieces, _ in prop.constraints:
        if kind != "equal_parts" or len(pieces) != k or sum(len(p) for p in pieces) != len(want):
            continue
        if np.array_equal(np.sort(np.concatenate([table.roots(p) for p in pieces])), want):
            prop.constants.append((module, attr, pieces[0]))
            return True
    return False
