"""Deployment steps of ``fxprune prune``: latency on runtimes, latency budgets and ratio sweeps."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from torch import nn

from ..analysis import Analysis
from ..plan import Plan
from .common import Steps

__all__ = [
    "backend_latency",
    "deploy_sections",
    "plan_latency_budget",
    "print_sweep_table",
    "sweep_report",
]


@dataclass
class DeployRecord:
    """What the deployment steps measured, for the printed table and the report."""

    measurements: dict[str, Any] = field(default_factory=dict)
    budget: Any = None
    sweep: list = field(default_factory=list)
    sweep_backend: str = ""


def _record(args: argparse.Namespace) -> DeployRecord:
    if not hasattr(args, "deploy_record"):
        args.deploy_record = DeployRecord()
    return args.deploy_record


def backend_latency(
    dense: nn.Module, slim: nn.Module, x: torch.Tensor, args: argparse.Namespace, steps: Steps
) -> dict[str, tuple[float, float]]:
    """Median latency (ms) of dense and pruned on every ``--backend``, timed interleaved per backend."""
    from fxprune.deploy import measure_latency

    rec, out = _record(args), {}
    args.conditions = []
    for backend in args.backend:
        with steps(f"{backend} latency, dense and pruned interleaved") as info:
            res = measure_latency({"dense": dense, "pruned": slim}, x, backend, threads=args.threads or 1)
            rec.measurements[backend] = res
            out[f"{backend} latency, batch {x.shape[0]}"] = (res["dense"].median_ms, res["pruned"].median_ms)
            info["detail"] = res["dense"].conditions()
            args.conditions.append(f"{backend}: {res['dense'].conditions()}")
    return out


def plan_latency_budget(
    analysis: Analysis, x: torch.Tensor, args: argparse.Namespace, backend: str, steps: Steps
) -> Plan:
    """Plan for ``--target-latency`` on ``backend`` (layer table cached on disk, checked by measurement)."""
    from fxprune.deploy import LatencyPlanner

    threads = args.threads or 1
    planner = LatencyPlanner(
        args.target_latency, backend, round_to=args.round_to, min_width=args.min_width, threads=threads
    )
    plan = planner.plan(analysis, x, args.importance)
    _record(args).budget = planner.result
    return plan


def sweep_report(dense: nn.Module, x: torch.Tensor, args: argparse.Namespace, steps: Steps, console: Console):
    """Time dense against pruning ratios 0.05..0.9 on the first backend and print the table."""
    from fxprune.deploy.sweep import latency_sweep, slower_points

    backend = (args.backend or ["ort"])[0]
    with steps(f"ratio sweep on {backend}") as info:
        points, _ = latency_sweep(dense, x, backend=backend, threads=args.threads or 1, budget_s=6.0)
        slow = [p.ratio for p in slower_points(points)]
        info["detail"] = f"round_to {points[0].round_to}; slower than dense at: {slow or 'none'}"
    rec = _record(args)
    rec.sweep, rec.sweep_backend = points, backend
    print_sweep_table(points, console)


def print_sweep_table(points: list, console: Console) -> None:
    """The latency-against-ratio table of a sweep (``fxprune.deploy.sweep.latency_sweep`` points)."""
    from fxprune.deploy.report import sweep_rows

    rows = sweep_rows(points)
    table = Table(title="latency against pruning ratio")
    for col in rows[0]:
        table.add_column(col, justify="right")
    for r in rows:
        table.add_row(*(escape(str(v)) for v in r.values()))
    console.print(table)


def deploy_sections(args: argparse.Namespace, folder: Path) -> tuple[list, list]:
    """Report sections (latency per backend with conditions, latency budget, sweep) and their images."""
    rec = getattr(args, "deploy_record", None)
    if rec is None:
        return [], []
    from fxprune.deploy.report import measurement_rows, plot_sweep, sweep_rows

    sections, images = [], []
    if rec.measurements:
        sections.append(("Latency per backend", measurement_rows(rec.measurements)))
    if rec.budget is not None:
        b = rec.budget
        rows = [
            {"round": i + 1, **{k: f"{v:.3f}" if v is not None else "" for k, v in r.items()}}
            for i, r in enumerate(b.rounds)
        ]
        rows.append(
            {
                "round": "chosen",
                "estimated_ratio": f"{b.estimated_ratio:.3f}",
                "measured_ratio": "" if b.measured_ratio is None else f"{b.measured_ratio:.3f}",
                "internal_target": f"target {b.target_ratio:.3f}, round_to {b.round_to}, {b.backend}",
            }
        )
        sections.append(("Latency budget (ratios of dense latency)", rows))
    if rec.sweep:
        sections.append((f"Latency against pruning ratio ({rec.sweep_backend})", sweep_rows(rec.sweep)))
        images.append(
            plot_sweep(rec.sweep, folder / "latency_sweep.png", title=f"{args.spec} on {rec.sweep_backend}")
        )
    return sections, images
