"""The ``fxprune`` command line: ``demo``, ``analyze`` and ``prune``."""

from __future__ import annotations

import argparse
import copy
import fnmatch
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from torch import nn

from . import __version__
from .analysis import Analysis, analyze
from .capture import CaptureError
from .io import save
from .measure import measure_cpu_latency
from .plan import Plan
from .prune import PruneReport, VerificationError, _plan_for_target, apply_plan
from .report import Metric, before_after_table, format_ratio, format_value

__all__ = ["main"]

_ERRORS = (CaptureError, ValueError, VerificationError, FileNotFoundError, ImportError)

_MAIN_EPILOG = """\
examples:
  fxprune demo                                       prune a CIFAR ResNet-56 by half and time it
  fxprune analyze torchvision:resnet50               show the coupled channel groups of a model
  fxprune prune torchvision:resnet50 --target-flops 0.5 --out resnet50-slim.pt --report report/
  fxprune prune yolov8n.yaml --ratio 0.3 --input 1,3,640,640

model SPEC forms:
  cifar_resnet56 | fxprune:cifar_resnet56   a built-in model (fxprune.models.list_models())
  torchvision:resnet50                       any torchvision.models.get_model name (random init)
  yolov8n.yaml | run.pt                      an ultralytics model yaml or checkpoint
  package.module:factory                     a function called without arguments returning an nn.Module
Add --weights PATH to load a state dict into the model before analysing or pruning it.

Run 'fxprune COMMAND --help' for the options of a command."""

_DEMO_EPILOG = """\
The demo builds the CIFAR ResNet-56 of fxprune's model zoo (loading the trained CIFAR-10 weights when
shared/data/weights/resnet56-*.th is present), removes half of the channels of every coupled group,
checks the slim model against the masked original and times both on the CPU, interleaved, with one
thread by default (--threads 2 or more to use more cores).

examples:
  fxprune demo
  fxprune demo --ratio 0.7 --threads 2"""

_ANALYZE_EPILOG = """\
By default only groups with prunable channels are listed; frozen groups (model outputs, layers next to
unsupported ops, constants in reshape/split calls) are counted. --all lists every group.

examples:
  fxprune analyze cifar_resnet56
  fxprune analyze torchvision:resnet50 --input 1,3,160,160 --all
  fxprune analyze torchvision:vit_b_16 --ignore 'heads.*'
  fxprune analyze mypkg.models:build_net --leaf 'backbone.attn*' --weights net.pt"""

_PRUNE_EPILOG = """\
The amount to prune is given by one of --ratio (fraction of channels removed per group),
--target-flops or --target-params (fraction of the dense model's FLOPs/parameters to keep; the ratio is
found by bisection). Default: --ratio 0.5. The slim model is verified against the dense model with the
removed channels masked; a mismatch exits with status 2.

examples:
  fxprune prune cifar_resnet56 --ratio 0.5
  fxprune prune torchvision:resnet50 --target-flops 0.5 --round-to 8 --out resnet50-slim.pt
  fxprune prune torchvision:resnet18 --ratio 0.4 --ratio-for 'layer4.*=0.2' --ignore fc --report out/
  fxprune prune yolov8n.yaml --ratio 0.3 --global --no-latency

Load a saved model back with fxprune.load(SPEC, "resnet50-slim.pt") in Python."""


# ----------------------------------------------------------------------------------------------- parsing


def _fraction(low_open: bool) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        ok = (0.0 < value < 1.0) if low_open else (0.0 <= value < 1.0)
        if not ok:
            interval = "(0, 1)" if low_open else "[0, 1)"
            raise argparse.ArgumentTypeError(f"must be a fraction in {interval}, got {text}")
        return value

    return parse


def _shape(text: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,3,224,224, got {text!r}") from None
    if not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected positive sizes like 1,3,224,224, got {text!r}")
    return shape


def _ratio_for(text: str) -> tuple[str, float]:
    pattern, sep, value = text.rpartition("=")
    if not sep or not pattern:
        raise argparse.ArgumentTypeError(f"expected PATTERN=RATIO like 'layer4.*=0.3', got {text!r}")
    return pattern, _fraction(False)(value)


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "spec",
        metavar="SPEC",
        help="model: cifar_resnet56, torchvision:resnet50, yolov8n.yaml, package.module:factory",
    )
    p.add_argument("--weights", metavar="PATH", help="state dict to load into the model first")
    p.add_argument(
        "--input",
        metavar="SHAPE",
        type=_shape,
        help="example input shape, e.g. 1,3,224,224 (default: the model's usual input)",
    )
    p.add_argument(
        "--ignore",
        metavar="PATTERN",
        action="append",
        default=[],
        help="module name (glob) or class name whose channels must not change; repeatable",
    )
    p.add_argument(
        "--leaf",
        metavar="PATTERN",
        action="append",
        default=[],
        help="module name (glob) or class name not to trace into (channels freeze); repeatable",
    )


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``fxprune`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="fxprune",
        description="Structured pruning for PyTorch: find coupled channels with torch.fx, slim the model "
        "in place and verify the result.",
        epilog=_MAIN_EPILOG,
        formatter_class=fmt,
    )
    parser.add_argument("--version", action="version", version=f"fxprune {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    demo = sub.add_parser(
        "demo",
        help="prune a CIFAR ResNet-56 by half and compare size, FLOPs and latency",
        description="Prune the built-in CIFAR ResNet-56 and print a before/after table.",
        epilog=_DEMO_EPILOG,
        formatter_class=fmt,
    )
    demo.add_argument(
        "--ratio", type=_fraction(False), default=0.5, help="fraction of channels removed (default 0.5)"
    )
    demo.add_argument(
        "--threads",
        metavar="N",
        type=_positive_int,
        default=1,
        help="CPU threads for the whole demo, latency included (default 1: stable timings of "
        "this small model even on a busy machine)",
    )
    demo.add_argument("--no-latency", action="store_true", help="skip the CPU latency measurement")

    an = sub.add_parser(
        "analyze",
        help="list the coupled channel groups and unsupported ops of a model",
        description="Capture a model and list its coupled channel groups.",
        epilog=_ANALYZE_EPILOG,
        formatter_class=fmt,
    )
    _add_model_args(an)
    an.add_argument("--all", action="store_true", help="also list groups whose channels are all frozen")

    pr = sub.add_parser(
        "prune",
        help="prune a model, verify it, compare it with the dense model and save it",
        description="Prune a model in place, verify it and print a before/after table.",
        epilog=_PRUNE_EPILOG,
        formatter_class=fmt,
    )
    _add_model_args(pr)
    amount = pr.add_mutually_exclusive_group()
    amount.add_argument(
        "--ratio", type=_fraction(False), help="fraction of channels removed from every group (default 0.5)"
    )
    amount.add_argument(
        "--target-flops",
        metavar="FRACTION",
        type=_fraction(True),
        help="keep this fraction of the dense FLOPs, e.g. 0.5",
    )
    amount.add_argument(
        "--target-params",
        metavar="FRACTION",
        type=_fraction(True),
        help="keep this fraction of the dense parameters, e.g. 0.5",
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
        "--round-to",
        metavar="N",
        type=_positive_int,
        default=1,
        help="keep channel counts multiples of N (e.g. 8 for tensor cores)",
    )
    pr.add_argument(
        "--min-width",
        metavar="N",
        type=_positive_int,
        default=1,
        help="keep at least N channels in every group",
    )
    pr.add_argument(
        "--ratio-for",
        metavar="PATTERN=RATIO",
        type=_ratio_for,
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
        type=_positive_int,
        help="CPU threads for the latency runs (default: torch's)",
    )
    return parser


# ----------------------------------------------------------------------------------------------- helpers


class _Steps:
    """A spinner while a step runs and a check-marked line with its duration when it ends."""

    def __init__(self, console: Console) -> None:
        self.console = console

    @contextmanager
    def __call__(self, title: str) -> Iterator[dict[str, str]]:
        info: dict[str, str] = {}
        start = time.perf_counter()
        with self.console.status(f"{title}..."):
            yield info
        detail = f": {info['detail']}" if info.get("detail") else ""
        took = time.perf_counter() - start
        self.console.print(f"[green]✓[/] {escape(title)}{escape(detail)} [dim]({took:.2f} s)[/]")


def _resolve_patterns(model: nn.Module, patterns: Sequence[str]) -> list[type | str]:
    """Class names become module types; everything else stays a module-name glob."""
    by_class: dict[str, type] = {type(m).__name__: type(m) for m in model.modules()}
    names = [n for n, _ in model.named_modules()]
    out: list[type | str] = []
    for p in patterns:
        if p in by_class and not any(fnmatch.fnmatchcase(n, p) for n in names):
            out.append(by_class[p])
        else:
            out.append(p)
    return out


def _load(args: argparse.Namespace, steps: _Steps) -> tuple[nn.Module, torch.Tensor]:
    from .models.spec import load_model

    with steps(f"loading {args.spec}") as info:
        model, shape = load_model(args.spec, args.weights)
        shape = args.input or shape
        info["detail"] = f"{type(model).__name__}, input {'x'.join(map(str, shape))}" + (
            f", weights {args.weights}" if args.weights else ""
        )
    return model, torch.randn(*shape)


def _analyze(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, steps: _Steps) -> Analysis:
    with steps("capture and analysis") as info:
        analysis = analyze(
            model,
            x,
            ignore=_resolve_patterns(model, args.ignore),
            leaf_modules=_resolve_patterns(model, args.leaf),
        )
        n_prunable = len(analysis.prunable_groups)
        info["detail"] = (
            f"captured by {analysis.captured.method}, {len(analysis.groups)} groups, {n_prunable} prunable"
        )
    return analysis


def _latency(
    models: dict[str, nn.Module],
    x: torch.Tensor,
    threads: int | None,
    budget_s: float,
    limit_s: float | None = None,
) -> dict[str, float] | None:
    """Median CPU latency (ms) of each model, timed interleaved in about ``budget_s`` seconds.

    Up to 5 rounds of interleaved runs (model order rotated each round); rounds stop early once 3x the
    budget has passed, so a loaded machine cannot stall the command. Returns None when one call per model
    is estimated to take longer than ``limit_s / 4``.
    """
    dense = next(iter(models.values()))
    prev = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        with torch.inference_mode():
            dense.eval()(x)
            start = time.perf_counter()
            dense(x)
            per_call = max(time.perf_counter() - start, 1e-5)
    finally:
        torch.set_num_threads(prev)
    names = list(models)
    if limit_s is not None and per_call * len(names) * 4 > limit_s:
        return None
    rounds = 5
    iters = max(1, min(20, int(budget_s / (per_call * len(names) * rounds))))
    samples: dict[str, list[float]] = {name: [] for name in names}
    start = time.perf_counter()
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        warmup = (3 if per_call < 0.05 else 1) if r == 0 else 0
        res = measure_cpu_latency(
            {name: models[name] for name in order}, x, threads=threads, warmup=warmup, iters=iters, repeats=1
        )
        for name in names:
            samples[name].append(res[name].median_ms)
        if r >= 1 and time.perf_counter() - start > 3 * budget_s:
            break
    return {name: statistics.median(v) for name, v in samples.items()}


def _modules_cell(modules: Sequence[str]) -> str:
    shown = ", ".join(modules[:3])
    return shown + (f" +{len(modules) - 3} more" if len(modules) > 3 else "")


def _verification_lines(report: PruneReport, tol: float = 1e-4) -> list[str]:
    if report.exact_error is None:
        return ["not verified"]
    lines = [
        f"verified: the slim model equals the dense model with the removed channels masked "
        f"(max relative error {report.exact_error:.1e} <= {tol:g})"
    ]
    if report.approx_groups:
        lines.append(
            f"approximate groups {', '.join(map(str, report.approx_groups))} (normalisation over "
            f"pruned channels): max relative error {report.approx_error:.2g}"
        )
    return lines


def _group_summary(analysis: Analysis, report: PruneReport) -> str:
    pruned = [w for w in report.widths if w[3] < w[2]]
    before = sum(w[2] for w in report.widths)
    after = sum(w[3] for w in report.widths)
    frozen = sum(1 for g in analysis.groups if g.prunable == 0)
    return (
        f"groups pruned: {len(pruned)} of {len(report.widths)} ({frozen} frozen); "
        f"channels {before} -> {after}"
    )


def _metrics(report: PruneReport, latency: dict[str, tuple[float, float]]) -> list[Metric]:
    rows = [
        Metric("parameters", report.params_before, report.params_after, "count"),
        Metric("FLOPs", report.flops_before, report.flops_after, "flops"),
    ]
    rows += [Metric(name, dense, slim, "ms") for name, (dense, slim) in latency.items()]
    return rows


def _latency_caption(latency: dict[str, tuple[float, float]], threads: int | None) -> str | None:
    if not latency:
        return None
    n = threads or torch.get_num_threads()
    return f"latency: median, interleaved runs, {n} CPU thread{'s' if n > 1 else ''}"


def _measure(
    dense: nn.Module,
    slim: nn.Module,
    inputs: dict[str, torch.Tensor],
    threads: int | None,
    steps: _Steps,
    budget_s: float,
    limit_s: float | None = None,
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    skipped = []
    with steps("CPU latency, dense and pruned interleaved") as info:
        for label, x in inputs.items():
            ms = _latency({"dense": dense, "pruned": slim}, x, threads, budget_s, limit_s)
            if ms is None:
                skipped.append(label)
            else:
                out[label] = (ms["dense"], ms["pruned"])
        n = threads or torch.get_num_threads()
        info["detail"] = f"{n} thread{'s' if n > 1 else ''}" + (
            f"; too slow here, skipped: {', '.join(skipped)}" if skipped else ""
        )
    return out


# ----------------------------------------------------------------------------------------------- commands


def _cmd_demo(args: argparse.Namespace, console: Console) -> int:
    prev = torch.get_num_threads()
    torch.set_num_threads(args.threads)
    try:
        return _demo(args, console)
    finally:
        torch.set_num_threads(prev)


def _demo(args: argparse.Namespace, console: Console) -> int:
    from .data import shared_data_dir
    from .models import create_model, load_cifar_checkpoint

    steps = _Steps(console)
    torch.manual_seed(0)
    with steps("building CIFAR ResNet-56") as info:
        model = create_model("cifar_resnet56").eval()
        root = shared_data_dir()
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
        latency = _measure(dense, model, inputs, args.threads, steps, budget_s=2.0, limit_s=8.0)
    console.print()
    table = before_after_table(
        _metrics(report, latency),
        title=f"CIFAR ResNet-56, ratio {args.ratio:g}",
        before_label="dense",
        after_label="pruned",
    )
    table.caption = _latency_caption(latency, args.threads)
    console.print(table)
    for line in _verification_lines(report):
        console.print(escape(line))
    console.print(escape(_group_summary(analysis, report)))
    return 0


def _cmd_analyze(args: argparse.Namespace, console: Console) -> int:
    steps = _Steps(console)
    torch.manual_seed(0)
    model, x = _load(args, steps)
    analysis = _analyze(model, x, args, steps)
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
            escape(_modules_cell(r["modules"])),
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


def _plan(analysis: Analysis, x: torch.Tensor, args: argparse.Namespace) -> tuple[Plan, str]:
    kw: dict[str, Any] = dict(
        importance=args.importance,
        ratios=dict(args.ratio_for) or None,
        round_to=args.round_to,
        min_width=args.min_width,
        global_ranking=args.global_ranking,
    )
    if args.target_flops is not None:
        return (
            _plan_for_target(analysis, x, args.target_flops, "flops", **kw),
            f"{args.target_flops:g} x FLOPs",
        )
    if args.target_params is not None:
        return (
            _plan_for_target(analysis, x, args.target_params, "params", **kw),
            f"{args.target_params:g} x params",
        )
    ratio = 0.5 if args.ratio is None else args.ratio
    return analysis.plan(ratio, **kw), f"ratio {ratio:g}"


def _write_report(
    out_dir: str,
    args: argparse.Namespace,
    analysis: Analysis,
    report: PruneReport,
    metrics: list[Metric],
    target: str,
    console: Console,
) -> Path:
    from .report import write_markdown_report

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
    ]
    checks = [{"check": line} for line in _verification_lines(report)] + [
        {"check": _group_summary(analysis, report)}
    ]
    prunable = {g.id for g in analysis.prunable_groups}
    widths = [w for w in report.widths if w[0] in prunable]
    groups = [
        {"group": gid, "first module": first, "before": b, "after": a} for gid, first, b, a in report.widths
    ]
    images = []
    try:
        from .report import plot_group_widths

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
    return write_markdown_report(
        folder / "report.md",
        f"fxprune report: {args.spec}",
        [
            ("Settings", setup),
            ("Before and after", summary),
            ("Verification", checks),
            ("Group widths", groups),
        ],
        images,
    )


def _cmd_prune(args: argparse.Namespace, console: Console) -> int:
    steps = _Steps(console)
    torch.manual_seed(0)
    model, x = _load(args, steps)
    analysis = _analyze(model, x, args, steps)
    with steps("planning") as info:
        plan, target = _plan(analysis, x, args)
        info["detail"] = f"{target}, {args.importance} importance: {plan.removed_count()} channels to remove"
    dense = None if args.no_latency else copy.deepcopy(model)
    with steps("slimming and verification") as info:
        report = apply_plan(analysis, plan, x)
        info["detail"] = f"slimmed in {report.slim_seconds:.2f} s"
    latency: dict[str, tuple[float, float]] = {}
    if dense is not None:
        latency = _measure(
            dense, model, {f"CPU latency, batch {x.shape[0]}": x}, args.threads, steps, budget_s=3.0
        )
        del dense
    metrics = _metrics(report, latency)
    console.print()
    table = before_after_table(
        metrics, title=f"{args.spec}, {target}", before_label="dense", after_label="pruned"
    )
    table.caption = _latency_caption(latency, args.threads)
    console.print(table)
    for line in _verification_lines(report):
        console.print(escape(line))
    console.print(escape(_group_summary(analysis, report)))
    if args.out:
        save(model, args.out, spec=args.spec)
        console.print(escape(f"saved to {args.out}; load it with fxprune.load({args.spec!r}, {args.out!r})"))
    if args.report:
        path = _write_report(args.report, args, analysis, report, metrics, target, console)
        console.print(escape(f"report written to {path}"))
    return 0


_COMMANDS = {"demo": _cmd_demo, "analyze": _cmd_analyze, "prune": _cmd_prune}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``fxprune`` command line with ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version and usage errors
        return exc.code if isinstance(exc.code, int) else 2
    console = Console(width=None if sys.stdout.isatty() else 120)
    try:
        return _COMMANDS[args.command](args, console)
    except _ERRORS as exc:
        err = Console(stderr=True, width=None if sys.stderr.isatty() else 120)
        label = {
            CaptureError: "capture failed",
            VerificationError: "verification failed",
            FileNotFoundError: "file not found",
        }.get(type(exc), "error")
        err.print(Text(f"fxprune {args.command}: {label}: {exc}", style="red"))
        return 2


if __name__ == "__main__":
    sys.exit(main())
