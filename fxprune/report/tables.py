"""Number formatting and before/after comparison tables rendered with rich."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from rich.table import Table

_PREFIXES = ("", "K", "M", "G", "T", "P")


def _three_digits(x: float) -> str:
    """Format ``x`` with about three significant digits (``1.82``, ``11.2``, ``112``)."""
    ax = abs(x)
    if ax >= 100 or ax == 0:
        return f"{x:.0f}"
    if ax >= 10:
        return f"{x:.1f}"
    if ax >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _scaled(n: float) -> tuple[str, str]:
    """Split ``n`` into a three-digit mantissa and an SI prefix (K, M, G, ...)."""
    idx = 0
    value = float(n)
    while abs(value) >= 1000 and idx < len(_PREFIXES) - 1:
        value /= 1000.0
        idx += 1
    text = _three_digits(value)
    if abs(float(text)) >= 1000 and idx < len(_PREFIXES) - 1:  # rounding crossed a prefix (999.6 K)
        idx += 1
        text = _three_digits(float(text) / 1000.0)
    return text, _PREFIXES[idx]


def format_count(n: float) -> str:
    """Human count: ``512``, ``3.46 K``, ``11.2 M``, ``1.05 G``."""
    if abs(n) < 1000 and float(n).is_integer():
        return str(int(n))
    text, prefix = _scaled(n)
    return f"{text} {prefix}".rstrip()


def format_flops(n: float) -> str:
    """Human FLOPs: ``512 FLOPs``, ``4.10 MFLOPs``, ``1.82 GFLOPs``."""
    text, prefix = _scaled(n)
    return f"{text} {prefix}FLOPs"


def format_ms(x: float) -> str:
    """Milliseconds with three significant digits: ``3.41 ms``, ``0.512 ms``, ``125 ms``."""
    return f"{_three_digits(x)} ms"


def format_ratio(before: float | None, after: float | None) -> str:
    """``before / after`` as ``2.31x``; ``-`` when undefined."""
    if before is None or after is None or after == 0 or not math.isfinite(before / after):
        return "-"
    return f"{before / after:.2f}x"


_FORMATTERS = {
    "count": format_count,
    "params": format_count,
    "flops": format_flops,
    "ms": format_ms,
    "latency": format_ms,
}


def format_value(value: Any, kind: str = "raw") -> str:
    """Format ``value`` according to ``kind`` (count/params, flops, ms/latency, raw)."""
    if value is None:
        return "-"
    fmt = _FORMATTERS.get(kind)
    if fmt is not None:
        return fmt(value)
    if isinstance(value, float):
        return _three_digits(value)
    return str(value)


@dataclass(frozen=True)
class Metric:
    """One before/after row. ``kind`` selects the unit: count, params, flops, ms, latency or raw."""

    name: str
    before: float | None
    after: float | None
    kind: str = "raw"


def _as_metric(row: Metric | Mapping[str, Any] | tuple[Any, ...]) -> Metric:
    if isinstance(row, Metric):
        return row
    if isinstance(row, Mapping):
        return Metric(row["name"], row.get("before"), row.get("after"), row.get("kind", "raw"))
    return Metric(*row)


def before_after_table(
    rows: Iterable[Metric | Mapping[str, Any] | tuple[Any, ...]],
    *,
    title: str | None = None,
    before_label: str = "before",
    after_label: str = "after",
) -> Table:
    """Rich table with metric, before, after and a ``before/after`` ratio column (``2.31x``).

    Each row is a :class:`Metric`, a dict with ``name``/``before``/``after``/``kind`` keys or a tuple
    ``(name, before, after[, kind])``.
    """
    table = Table(title=title)
    table.add_column("metric", style="bold")
    table.add_column(before_label, justify="right")
    table.add_column(after_label, justify="right")
    table.add_column("ratio", justify="right", style="cyan")
    for row in rows:
        m = _as_metric(row)
        table.add_row(
            m.name,
            format_value(m.before, m.kind),
            format_value(m.after, m.kind),
            format_ratio(m.before, m.after),
        )
    return table
