"""Steps, model loading, analysis and latency helpers shared by the commands."""

from __future__ import annotations

import argparse
import fnmatch
import statistics
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from rich.console import Console
from rich.markup import escape
from torch import nn

from ..analysis import Analysis, analyze
from ..measure import measure_cpu_latency
from ..prune import PruneReport
from ..report import Metric


class Steps:
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


def resolve_patterns(model: nn.Module, patterns: Sequence[str]) -> list[type | str]:
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


def load_input(args: argparse.Namespace, steps: Steps) -> tuple[nn.Module, torch.Tensor]:
    from ..models.spec import load_model

    with steps(f"loading {args.spec}") as info:
        model, shape = load_model(args.spec, args.weights)
        shape = args.input or shape
        info["detail"] = f"{type(model).__name__}, input {'x'.join(map(str, shape))}" + (
            f", weights {args.weights}" if args.weights else ""
        )
    return model, torch.randn(*shape)


def analyze_model(model: nn.Module, x: torch.Tensor, args: argparse.Namespace, steps: Steps) -> Analysis:
    with steps("capture and analysis") as info:
        analysis = analyze(
            model,
            x,
            ignore=resolve_patterns(model, args.ignore),
            leaf_modules=resolve_patterns(model, args.leaf),
        )
        n_prunable = len(analysis.prunable_groups)
        info["detail"] = (
            f"captured by {analysis.captured.method}, {len(analysis.groups)} groups, {n_prunable} prunable"
        )
    return analysis


def interleaved_latency(
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


def modules_cell(modules: Sequence[str]) -> str:
    shown = ", ".join(modules[:3])
    return shown + (f" +{len(modules) - 3} more" if len(modules) > 3 else "")


def verification_lines(report: PruneReport, tol: float = 1e-4) -> list[str]:
    if report.exact_error is None:
        return ["not verified"]
    lines = [
        f"verified: the slim model equals the dense model with the removed channels masked "
        f"(max relative error {report.exact_error:.1e} <= {tol:g})"
    ]
    if report.approx_groups:
        lines.append(
            f"approximate groups {', '.join(map(str, report.approx_groups))} (normalisation over "
            f"pruned channels): max relative change from the verified output {report.approx_error:.2g}"
        )
    return lines


def group_summary(analysis: Analysis, report: PruneReport) -> str:
    pruned = [w for w in report.widths if w[3] < w[2]]
    before = sum(w[2] for w in report.widths)
    after = sum(w[3] for w in report.widths)
    frozen = sum(1 for g in analysis.groups if g.prunable == 0)
    return (
        f"groups pruned: {len(pruned)} of {len(report.widths)} ({frozen} frozen); "
        f"channels {before} -> {after}"
    )


def metric_rows(report: PruneReport, latency: dict[str, tuple[float, float]]) -> list[Metric]:
    rows = [Metric("parameters", report.params_before, report.params_after, "count")]
    if report.flops_before is not None and report.flops_after is not None:  # else a warning says why
        rows.append(Metric("FLOPs", report.flops_before, report.flops_after, "flops"))
    rows += [Metric(name, dense, slim, "ms") for name, (dense, slim) in latency.items()]
    return rows


def latency_caption(latency: dict[str, tuple[float, float]], threads: int | None) -> str | None:
    if not latency:
        return None
    n = threads or torch.get_num_threads()
    return f"latency: median, interleaved runs, {n} CPU thread{'s' if n > 1 else ''}"


def measure(
    dense: nn.Module,
    slim: nn.Module,
    inputs: dict[str, torch.Tensor],
    threads: int | None,
    steps: Steps,
    budget_s: float,
    limit_s: float | None = None,
) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    skipped = []
    with steps("CPU latency, dense and pruned interleaved") as info:
        for label, x in inputs.items():
            ms = interleaved_latency({"dense": dense, "pruned": slim}, x, threads, budget_s, limit_s)
            if ms is None:
                skipped.append(label)
            else:
                out[label] = (ms["dense"], ms["pruned"])
        n = threads or torch.get_num_threads()
        info["detail"] = f"{n} thread{'s' if n > 1 else ''}" + (
            f"; too slow here, skipped: {', '.join(skipped)}" if skipped else ""
        )
    return out
