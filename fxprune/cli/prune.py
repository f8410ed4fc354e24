"""``fxprune prune``: prune a model, verify it, compare it with the dense model and save it."""

from __future__ import annotations

import argparse
import copy
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape

from ..analysis import Analysis
from ..io import save
from ..measure import is_slower
from ..plan import DEFAULT_ROUND_TO, Plan
from ..prune import PruneReport, apply_plan
from ..report import Metric, before_after_table, format_ratio, format_value
from ..targets import plan_for_target
from .args import add_model_args, backend_list, fraction, latency_target, positive_int, ratio_for
from .common import (
    Steps,
    analyze_model,
    group_summary,
    latency_caption,
    load_input,
    measure,
    metric_rows,
    verification_lines,
)
from .deploy_steps import backend_latency, deploy_sections, plan_latency_budget, sweep_report

_PRUNE_EPILOG = """\
The amount to prune is given by one of --ratio (fraction of channels removed per group),
--target-flops or --target-params (fraction of the dense model's FLOPs/parameters to keep; the ratio is
found by bisection) or --target-latency (0.5x of the dense latency, or 12ms, on the first --backend,
default ort: planned with a per-layer latency table cached in ~/.cache/fxprune/lut and checked by
measurement). Default: --ratio 0.5. The slim model is verified against the dense model with the
removed channels masked; a mismatch exits with status 2. --backend ort,openvino adds latency rows
measured on those runtimes (default: torch CPU eager).

examples:
  fxprune prune cifar_resnet56 --ratio 0.5
  fxprune prune torchvision:resnet50 --target-flops 0.5 --round-to 8 --out resnet50-slim.pt
  fxprune prune torchvision:resnet18 --ratio 0.4 --ratio-for 'layer4.*=0.2' --ignore fc --report out/
  fxprune prune yolov8n.yaml --ratio 0.3 --global --no-latency
  fxprune prune torchvision:resnet50 --target-latency 0.5x --backend ort,openvino --sweep --report out/

Load a saved model back with fxprune.load(SPEC, "resnet50-slim.pt") in Python."""


def add_parser(sub, fmt) -> None:
    """Register the command's subparser."""
    pr = sub.add_parser(
        "prune",
        help="prune a model, verify it, compare it with the dense model and save it",
        description="Prune a model in place, verify it and print a before/after table.",
        epilog=_PRUNE_EPILOG,
        formatter_class=fmt,
    )
    add_model_args(pr)
    amount = pr.add_mutually_exclusive_group()
    amount.add_argument(
        "--ratio", type=fraction(False), help="fraction of channels removed from every group (default 0.5)"
    )
    amount.add_argument(
        "--target-flops",
        metavar="FRACTION",
        type=fraction(True),
        help="keep this fraction of the dense FLOPs, e.g. 0.5",
    )
    amount.add_argument(
        "--target-params",
        metavar="FRACTION",
        type=fraction(True),
        help="keep this fraction of the dense parameters, e.g. 0.5",
    )
    amount.add_argument(
        "--target-latency",
        metavar="BUDGET",
        type=latency_target,
        help="latency budget on the first --backend (default ort): 0.5x of dense, or 12ms",
    )
    pr.add_argument(
        "--backend",
        type=backend_list,
        help="latency columns on these backends, e.g. ort,openvino (default: torch CPU eager)",
    )
    pr.add_argument(
        "--sweep",
        action="store_true",
        help="also time dense against ratios 0.05..0.9 on the first backend (plotted with --report)",
    )
    pr.add_argument(
        "--importance",
        choices=("l1", "l2", "random"),
        default="l2",
        help="channel importance criterion (default l2)",
    )
    pr.add_argument(
        "--global",
        dest="global_ranking",
        action="store_true",
        help="rank channels across all groups instead of pruning every group by the same ratio",
    )
    pr.add_argument(
        "--cost-weight",
        metavar="W",
        type=float,
        default=0.0,
        help="with --global and a FLOPs/params target: rank by importance x cost per channel ** W "
        "(W > 0 keeps high-resolution layers and takes more of the cheap ones; default 0)",
    )
    pr.add_argument(
        "--round-to",
        metavar="N",
        type=positive_int,
        help="keep channel counts multiples of N (default: the first --backend's alignment, e.g. 16 for ort "
        "on AVX-512, else 8; 1 keeps any width)",
    )
    pr.add_argument(
        "--min-width",
        metavar="N",
        type=positive_int,
        default=1,
        help="keep at least N channels in every group",
    )
    pr.add_argument(
        "--ratio-for",
        metavar="PATTERN=RATIO",
        type=ratio_for,
        action="append",
        default=[],
        help="per-module ratio, e.g. 'layer4.*=0.3'; repeatable, the first matching pattern wins",
    )
    pr.add_argument("--out", metavar="PATH", help="save the pruned model with fxprune.save")
    pr.add_argument("--report", metavar="DIR", help="write DIR/report.md and DIR/group_widths.png")
    pr.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")
    pr.add_argument(
        "--threads",
        metavar="N",
        type=positive_int,
        help="CPU threads for the latency runs (default: torch's)",
    )


def _plan(analysis: Analysis, x: torch.Tensor, args: argparse.Namespace, steps: Steps) -> tuple[Plan, str]:
    if args.target_latency is not None:
        return _plan_latency(analysis, x, args, steps)
    kw: dict[str, Any] = dict(
        importance=args.importance,
        ratios=dict(args.ratio_for) or None,
        round_to=args.round_to,
        min_width=args.min_width,
        global_ranking=args.global_ranking,
    )
    if args.target_flops is not None:
        return (
            plan_for_target(analysis, x, args.target_flops, "flops", cost_weight=args.cost_weight, **kw),
            f"{args.target_flops:g} x FLOPs",
        )
    if args.target_params is not None:
        return (
            plan_for_target(analysis, x, args.target_params, "params", cost_weight=args.cost_weight, **kw),
            f"{args.target_params:g} x params",
        )
    ratio = 0.5 if args.ratio is None else args.ratio
    return analysis.plan(ratio, **kw), f"ratio {ratio:g}"


def _alignment(args: argparse.Namespace) -> tuple[int, str]:
    """The ``round_to`` to plan with and where it comes from (--round-to, the backend, or the default)."""
    if args.round_to:
        return args.round_to, "--round-to"
    if args.backend or args.target_latency is not None:
        from fxprune.deploy.alignment import default_round_to

        backend = (args.backend or ["ort"])[0]
        return default_round_to(backend), f"{backend} fp32 alignment"
    return DEFAULT_ROUND_TO, "default alignment"


def _plan_latency(analysis: Analysis, x: torch.Tensor, args: argparse.Namespace, steps: Steps):
    backend = (args.backend or ["ort"])[0]
    plan = plan_latency_budget(analysis, x, args, backend, steps)
    return plan, f"latency {args.target_latency} on {backend}"


def _write_report(
    out_dir: str,
    args: argparse.Namespace,
    analysis: Analysis,
    report: PruneReport,
    metrics: list[Metric],
    target: str,
    console: Console,
) -> Path:
    from ..report import write_markdown_report

    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    summary = [
        {
            "metric": m.name,
            "dense": format_value(m.before, m.kind),
            "pruned": format_value(m.after, m.kind),
            "ratio": format_ratio(m.before, m.after),
        }
        for m in metrics
    ]
    setup = [
        {"setting": "model", "value": args.spec},
        {"setting": "amount", "value": target},
        {"setting": "importance", "value": args.importance},
        {"setting": "ranking", "value": "global" if args.global_ranking else "per group"},
        {"setting": "capture", "value": report.capture_method},
        {"setting": "round_to", "value": str(report.round_to)},
    ]
    checks = [{"check": line} for line in verification_lines(report)] + [
        {"check": group_summary(analysis, report)}
    ]
    prunable = {g.id for g in analysis.prunable_groups}
    widths = [w for w in report.widths if w[0] in prunable]
    groups = [
        {"group": gid, "first module": first, "before": b, "after": a} for gid, first, b, a in report.widths
    ]
    images = []
    try:
        from ..report import plot_group_widths

        images.append(
            plot_group_widths(
                [w[2] for w in widths],
                [w[3] for w in widths],
                [f"{w[0]} {w[1]}" for w in widths],
                folder / "group_widths.png",
                title=f"Channel group widths of {args.spec}",
            )
        )
    except ImportError:
        console.print("[yellow]matplotlib is not installed: report written without the width plot[/]")
    sections, more_images = deploy_sections(args, folder)
    return write_markdown_report(
        folder / "report.md",
        f"fxprune report: {args.spec}",
        [
            ("Settings", setup),
            ("Before and after", summary),
            *sections,
            ("Verification", checks),
            ("Group widths", groups),
        ],
        images + more_images,
    )


def run(args: argparse.Namespace, console: Console) -> int:
    no_target = args.target_flops is None and args.target_params is None
    if args.cost_weight and (no_target or not args.global_ranking):
        raise ValueError("--cost-weight applies to --target-flops/--target-params plans with --global")
    steps = Steps(console)
    torch.manual_seed(0)
    model, x = load_input(args, steps)
    analysis = analyze_model(model, x, args, steps)
    args.round_to, alignment = _alignment(args)
    with steps("planning") as info:
        plan, target = _plan(analysis, x, args, steps)
        info["detail"] = (
            f"{target}, {args.importance} importance, round_to {args.round_to}: "
            f"{plan.removed_count()} channels to remove"
        )
    dense = None if args.no_latency else copy.deepcopy(model)
    with steps("slimming and verification") as info:
        report = apply_plan(analysis, plan, x)
        report.round_to = args.round_to
        info["detail"] = f"slimmed in {report.slim_seconds:.2f} s"
    latency: dict[str, tuple[float, float]] = {}
    if dense is not None and args.backend:
        latency = backend_latency(dense, model, x, args, steps)
    elif dense is not None:
        latency = measure(
            dense, model, {f"CPU latency, batch {x.shape[0]}": x}, args.threads, steps, budget_s=3.0
        )
    if dense is not None and args.sweep:
        sweep_report(dense, x, args, steps, console)
    del dense
    metrics = metric_rows(report, latency)
    console.print()
    table = before_after_table(
        metrics, title=f"{args.spec}, {target}", before_label="dense", after_label="pruned"
    )
    table.caption = (
        latency_caption(latency, args.threads) if not args.backend else "latency: median, interleaved"
    )
    console.print(table)
    for line in getattr(args, "conditions", []):
        console.print(escape(line), style="dim")
    for label, (dense_ms, pruned_ms) in latency.items():
        if is_slower(dense_ms / pruned_ms):
            console.print(
                f"[yellow]warning: the pruned model is slower than dense ({escape(label)}); unaligned "
                "channel counts cost more than they save: try --round-to 8 or 16, or fxprune bench --sweep[/]"
            )
    for line in verification_lines(report):
        console.print(escape(line))
    console.print(escape(group_summary(analysis, report)))
    keep_any = "" if args.round_to == 1 else "; --round-to 1 keeps any width"
    console.print(escape(f"channel counts: multiples of {args.round_to} (round_to, {alignment}{keep_any})"))
    for warning in report.warnings:
        console.print(f"[yellow]warning: {escape(warning)}[/]")
    if args.out:
        save(model, args.out, spec=args.spec)
        console.print(escape(f"saved to {args.out}; load it with fxprune.load({args.spec!r}, {args.out!r})"))
    if args.report:
        path = _write_report(args.report, args, analysis, report, metrics, target, console)
        console.print(escape(f"report written to {path}"))
    return 0
