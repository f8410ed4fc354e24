"""``fxprune demo``: prune a CIFAR ResNet-56 by half and compare it with the dense model."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path

import torch
from rich.console import Console
from rich.markup import escape

from ..analysis import analyze
from ..prune import apply_plan
from ..report import before_after_table
from .args import fraction, positive_int
from .common import Steps, group_summary, latency_caption, measure, metric_rows, verification_lines

_DEMO_EPILOG = """\
The demo builds the CIFAR ResNet-56 of fxprune's model zoo (loading the trained CIFAR-10 weights when
shared/data/weights/resnet56-*.th is present), removes half of the channels of every coupled group,
checks the slim model against the masked original and times both on the CPU, interleaved, with one
thread by default (--threads 2 or more to use more cores).

examples:
  fxprune demo
  fxprune demo --ratio 0.7 --threads 2"""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    demo = sub.add_parser(
        "demo",
        help="prune a CIFAR ResNet-56 by half and compare size, FLOPs and latency",
        description="Prune the built-in CIFAR ResNet-56 and print a before/after table.",
        epilog=_DEMO_EPILOG,
        formatter_class=fmt,
    )
    demo.add_argument(
        "--ratio", type=fraction(False), default=0.5, help="fraction of channels removed (default 0.5)"
    )
    demo.add_argument(
        "--threads",
        metavar="N",
        type=positive_int,
        default=1,
        help="CPU threads for the whole demo, latency included (default 1: stable timings of "
        "this small model even on a busy machine)",
    )
    demo.add_argument(
        "--data",
        metavar="DIR",
        help="folder holding weights/resnet56-*.th (default: $FXPRUNE_SHARED_DATA, else ./shared/data or "
        "../shared/data from the current directory)",
    )
    demo.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")


def run(args: argparse.Namespace, console: Console) -> int:
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, console)
    finally:
        torch.set_num_threads(prev)


def _data_folder(given: str | None) -> Path | None:
    """The demo's data folder: ``--data``, ``$FXPRUNE_SHARED_DATA``, or a shared/data folder near the cwd."""
    from ..data import shared_data_dir

    found = shared_data_dir(given)
    if found is not None or given is not None:
        return found
    for candidate in (Path.cwd() / "shared" / "data", Path.cwd().parent / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    return None


def _demo(args: argparse.Namespace, console: Console) -> int:
    from ..models import create_model, load_cifar_checkpoint

    steps = Steps(console)
    torch.manual_seed(0)
    with steps("building CIFAR ResNet-56") as info:
        model = create_model("cifar_resnet56").eval()
        root = _data_folder(args.data)
        found = sorted((root / "weights").glob("resnet56-*.th")) if root is not None else []
        if found:
            load_cifar_checkpoint(model, found[0])
            info["detail"] = f"loaded trained CIFAR-10 weights from {found[0]}"
        else:
            info["detail"] = "random weights (no shared/data/weights/resnet56-*.th found)"
    x = torch.randn(1, 3, 32, 32)
    dense = copy.deepcopy(model)
    with steps("capture and analysis") as info:
        analysis = analyze(model, x)
        info["detail"] = f"{len(analysis.groups)} groups, {len(analysis.prunable_groups)} prunable"
    with steps(f"planning (ratio {args.ratio:g}, l2 importance)") as info:
        plan = analysis.plan(args.ratio)
        info["detail"] = f"{plan.removed_count()} channels to remove"
    with steps("slimming and verification"):
        report = apply_plan(analysis, plan, x)
    latency: dict[str, tuple[float, float]] = {}
    if not args.no_latency:
        inputs = {"CPU latency, batch 1": x, "CPU latency, batch 32": torch.randn(32, 3, 32, 32)}
        latency = measure(dense, model, inputs, args.threads, steps, budget_s=2.0, limit_s=8.0)
    console.print()
    table = before_after_table(
        metric_rows(report, latency),
        title=f"CIFAR ResNet-56, ratio {args.ratio:g}",
        before_label="dense",
        after_label="pruned",
    )
    table.caption = latency_caption(latency, args.threads)
    console.print(table)
    for line in verification_lines(report):
        console.print(escape(line))
    console.print(escape(group_summary(analysis, report)))
    return 0
