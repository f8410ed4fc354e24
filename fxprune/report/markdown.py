"""Markdown reports and width plots written to disk."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: Sequence[dict[str, Any]]) -> str:
    """Markdown table whose columns are the union of the rows' keys, in first-seen order."""
    if not rows:
        return "_(no rows)_\n"
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    lines = [
        "| " + " | ".join(_cell(c) for c in columns) + " |",
        "|" + "|".join("---" for _ in columns) + "|",
    ]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def write_markdown_report(
    path: str | os.PathLike[str],
    title: str,
    sections: Sequence[tuple[str, Sequence[dict[str, Any]]]],
    images: Sequence[str | os.PathLike[str]] = (),
) -> Path:
    """Write a Markdown file with a title, one table per ``(heading, rows)`` section and images.

    Image links are written relative to the report's folder when possible. Returns the path written.
    """
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    parts = [f"# {title}\n"]
    for heading, rows in sections:
        parts.append(f"## {heading}\n\n{markdown_table(rows)}")
    for image in images:
        img = Path(image)
        try:
            link = os.path.relpath(img.resolve(), out.parent.resolve())
        except ValueError:  # different drives on Windows
            link = str(img)
        parts.append(f"![{img.stem}]({Path(link).as_posix()})\n")
    out.write_text("\n".join(parts), encoding="utf-8")
    return out


def new_axes(figsize: tuple[float, float]):
    """A matplotlib figure (Agg canvas, no display needed) with one axes: ``(fig, ax)``."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def save_png(fig, ax, path: str | os.PathLike[str], title: str) -> Path:
    """Title, legend and tight layout, then save ``fig`` as a PNG at ``path`` (folders created)."""
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def plot_group_widths(
    widths_before: Sequence[int],
    widths_after: Sequence[int],
    labels: Sequence[str],
    path: str | os.PathLike[str],
    *,
    title: str = "Channel group widths",
) -> Path:
    """Save a PNG bar chart comparing each channel group's width before and after pruning."""
    if not len(widths_before) == len(widths_after) == len(labels):
        raise ValueError("widths_before, widths_after and labels must have the same length")
    n = len(labels)
    fig, ax = new_axes((min(max(6.0, 0.35 * n + 2.0), 40.0), 4.5))
    xs = list(range(n))
    ax.bar([x - 0.2 for x in xs], widths_before, width=0.4, label="before", color="#9bb7d4")
    ax.bar([x + 0.2 for x in xs], widths_after, width=0.4, label="after", color="#1f5f99")
    ax.set_xticks(xs)
    ax.set_xticklabels(list(labels), rotation=90, fontsize=7 if n > 20 else 9)
    ax.set_ylabel("channels")
    return save_png(fig, ax, path, title)
