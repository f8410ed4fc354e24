"""``fxprune methods``: the regularize-then-prune methods and their schedule constants."""

from __future__ import annotations

import argparse

from rich.console import Console
from rich.table import Table

from ..regularize import Pruner, get_method, method_names

_METHODS_EPILOG = """\
Each method runs from a training loop through fxprune.Pruner:

  pruner = fxprune.Pruner(model, example_inputs, method="greg1", ratio=0.5, scope="group")
  loss = task_loss + pruner.penalty(); loss.backward(); pruner.after_backward()
  optimizer.step(); pruner.step()          # until pruner.done, then pruner.prune()

The constants below are keyword arguments of Pruner (defaults: the papers' values).

examples:
  fxprune methods
  fxprune methods tpp"""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    p = sub.add_parser(
        "methods",
        help="list the regularize-then-prune methods and their schedule constants",
        description="List the pruning methods of fxprune.Pruner with their options and defaults.",
        epilog=_METHODS_EPILOG,
        formatter_class=fmt,
    )
    p.add_argument("method", nargs="?", help="show only this method")


def run(args: argparse.Namespace, console: Console) -> int:
    names = [args.method] if args.method else method_names()
    table = Table(title="fxprune.Pruner methods", show_lines=True)
    table.add_column("method", style="bold")
    table.add_column("what it does")
    table.add_column("options (defaults)")
    for name in names:
        cls = get_method(name)
        doc = (cls.__doc__ or "").strip().split("\n")[0].replace("``", "")
        options = ", ".join(
            f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in Pruner.options_of(name).items()
        )
        table.add_row(name, doc, options or "-")
    console.print(table)
    return 0
