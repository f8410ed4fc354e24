"""Human-readable reports: rich tables, Markdown files and width plots."""

from fxprune.report.markdown import plot_group_widths, write_markdown_report
from fxprune.report.tables import (
    Metric,
    before_after_table,
    format_count,
    format_flops,
    format_ms,
    format_ratio,
    format_value,
)

__all__ = [
    "Metric",
    "before_after_table",
    "format_count",
    "format_flops",
    "format_ms",
    "format_ratio",
    "format_value",
    "plot_group_widths",
    "write_markdown_report",
]
