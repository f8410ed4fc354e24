"""``fxprune analyze``: list the coupled channel groups and unsupported ops of a model."""

from __future__ import annotations

import argparse

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .args import add_model_args
from .common import Steps, analyze_model, load_input, modules_cell

_ANALYZE_EPILOG = """\
By default only groups with prunable channels are listed; frozen groups (model outputs, layers next to
unsupported ops, constants in reshape/split calls) are counted. --all lists every group.

examples:
  fxprune analyze cifar_resnet56
  fxprune analyze torchvision:resnet50 --input 1,3,160,160 --all
  fxprune analyze torchvision:vit_b_16 --ignore 'heads.*'
  fxprune analyze mypkg.models:build_net --leaf 'backbone.attn*' --weights net.pt"""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    an = sub.add_parser(
        "analyze",
        help="list the coupled channel groups and unsupported ops of a model",
        description="Capture a model and list its coupled channel groups.",
        epilog=_ANALYZE_EPILOG,
        formatter_class=fmt,
    )
    add_model_args(an)
    an.add_argument("--all", action="store_true", help="also list groups whose channels are all frozen")


def run(args: argparse.Namespace, console: Console) -> int:
    steps = Steps(console)
    torch.manual_seed(0)
    model, x = load_input(args, steps)
    analysis = analyze_model(model, x, args, steps)
    rows = analysis.summary_rows()
    shown = rows if args.all else [r for r in rows if r["prunable"] > 0]
    table = Table(title=f"channel groups of {args.spec}")
    for col, kw in (
        ("group", {"justify": "right"}),
        ("modules", {}),
        ("width", {"justify": "right"}),
        ("prunable", {"justify": "right"}),
        ("constraints", {}),
        ("exact", {}),
        ("note", {}),
    ):
        table.add_column(col, **kw)
    for r in shown:
        table.add_row(
            str(r["group"]),
            escape(modules_cell(r["modules"])),
            str(r["width"]),
            str(r["prunable"]),
            escape(r["constraints"]),
            "exact" if r["exact"] else "[yellow]approx[/]",
            escape(r["note"]),
        )
    console.print()
    console.print(table)
    frozen = sum(1 for r in rows if r["prunable"] == 0)
    width = sum(r["width"] for r in rows)
    prunable = sum(r["prunable"] for r in rows)
    console.print(
        f"{len(rows)} groups, {prunable} of {width} channels prunable; {frozen} groups fully frozen"
        + ("" if args.all or not frozen else " (not listed; --all lists them)")
    )
    for note in analysis.captured.notes:
        console.print(f"[dim]capture: {escape(note)}[/]")
    if analysis.unsupported:
        n = len(analysis.unsupported)
        console.print(f"\n[yellow]unsupported ops ({n}); the channels they touch are frozen:[/]")
        for u in analysis.unsupported:
            where = f" in {u.module}" if u.module else ""
            console.print(escape(f"  - {u.op} at {u.node}{where}: {u.reason}"))
    else:
        console.print("unsupported ops: none")
    return 0
