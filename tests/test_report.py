"""Tests for report tables, Markdown output and width plots."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from fxprune.report import (
    Metric,
    before_after_table,
    format_count,
    format_flops,
    format_ms,
    format_ratio,
    plot_group_widths,
    write_markdown_report,
)


def _render(table) -> str:
    console = Console(record=True, width=120, color_system=None)
    console.print(table)
    return console.export_text()


def test_formatters() -> None:
    assert format_count(512) == "512"
    assert format_count(11_200_000) == "11.2 M"
    assert format_count(3_456) == "3.46 K"
    assert format_count(999_999) == "1.00 M"
    assert format_flops(1.82e9) == "1.82 GFLOPs"
    assert format_flops(512) == "512 FLOPs"
    assert format_ms(3.4123) == "3.41 ms"
    assert format_ms(0.5121) == "0.512 ms"
    assert format_ms(125.4) == "125 ms"
    assert format_ratio(2.31, 1.0) == "2.31x"
    assert format_ratio(1.0, 0) == "-"


def test_before_after_table_renders_numbers() -> None:
    rows = [
        Metric("params", 11_200_000, 4_850_000, "count"),
        {"name": "FLOPs", "before": 1.82e9, "after": 0.91e9, "kind": "flops"},
        ("latency", 3.41, 1.70, "ms"),
        ("groups", 12, None),
    ]
    text = _render(before_after_table(rows, title="resnet"))
    for expected in [
        "resnet",
        "params",
        "11.2 M",
        "4.85 M",
        "2.31x",
        "1.82 GFLOPs",
        "910 MFLOPs",
        "2.00x",
        "3.41 ms",
        "1.70 ms",
        "2.01x",
        "groups",
        "12",
    ]:
        assert expected in text, expected


def test_markdown_report(tmp_path: Path) -> None:
    img = tmp_path / "img" / "widths.png"
    img.parent.mkdir()
    img.write_bytes(b"")
    out = write_markdown_report(
        tmp_path / "report.md",
        "Pruning report",
        [
            (
                "Summary",
                [
                    {"metric": "params", "before": "11.2 M", "after": "4.85 M"},
                    {"metric": "a|b", "before": 1, "after": 2, "note": "x"},
                ],
            ),
            ("Empty", []),
        ],
        images=[img],
    )
    text = out.read_text()
    assert text.startswith("# Pruning report")
    assert "## Summary" in text and "## Empty" in text
    assert "| metric | before | after | note |" in text
    assert "| params | 11.2 M | 4.85 M |  |" in text
    assert "| a\\|b | 1 | 2 | x |" in text
    assert "![widths](img/widths.png)" in text


def test_plot_group_widths_writes_png(tmp_path: Path) -> None:
    out = plot_group_widths([64, 128, 256], [32, 96, 128], ["g0", "g1", "g2"], tmp_path / "w.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 1000
