"""A FLOPs target met where the runtime's latency falls most: the plan for INT8 (or fp32) deployment.

A plain FLOPs target (``fxprune.prune(target_flops=...)``) removes the same share of every group, so the
FLOPs come off where they are cheap to run: wide, low-resolution layers. On INT8 kernels the narrow,
high-resolution layers run at a lower rate per multiply-accumulate, and pruned models keep them almost
whole, so their time falls less than their FLOPs. :class:`FlopsLatencyPlanner` meets the same FLOPs
target by removing aligned chunks where the backend's measured layer latencies
(:class:`fxprune.deploy.LatencyTable` at ``precision``) fall most (per unit of importance lost, as the
latency-budget planner ranks them, or per FLOP removed), until the model's FLOPs reach the target, and
keeps whichever plan (the plain uniform one included) the table says runs fastest. Nothing is timed
after planning: the FLOPs are counted, the latencies come from the table (missing layer shapes are
measured once, a few seconds for a CNN)::

    fxprune.deploy.prune(model, x, target_flops=0.5, backend="ort", precision="int8", by_latency=True)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fxprune.analysis import Analysis
from fxprune.importance.registry import Importance
from fxprune.plan import Plan, chunk_size, max_removable, plan_from_counts, removal_costs
from fxprune.targets import SlimmedSize, plan_for_target

from .alignment import default_round_to
from .latency_model import LatencyModel
from .lut import LatencyTable, frozen_heap

__all__ = [
    "RANKINGS",
    "FlopsLatencyPlanner",
    "FlopsLatencyResult",
    "greedy_to_flops",
    "plan_flops_by_latency",
]


RANKINGS = ("importance", "flops", "uniform")
"""How :func:`plan_flops_by_latency` ranks chunks: latency saved per unit of importance lost, latency
saved per FLOP removed, or no ranking (the plain FLOPs target's uniform share per group)."""


@dataclass
class FlopsLatencyResult:
    """The plan, its FLOPs fraction (counted), its latency ratio (estimated from the layer table), the
    ranking that made it, and the estimated latency ratio of every ranking tried."""

    plan: Plan
    target_flops: float
    flops_fraction: float
    estimated_latency_ratio: float
    round_to: int
    ranking: str
    candidates: dict[str, float] = field(default_factory=dict)


def greedy_to_flops(
    analysis: Analysis,
    scores: dict[int, np.ndarray],
    model: LatencyModel,
    size: SlimmedSize,
    target_flops: float,
    ranking: str = "importance",
    round_to: int = 1,
    min_width: int = 1,
) -> Plan | None:
    """Remove aligned chunks, best first by ``ranking`` (``"importance"``: estimated latency saved per unit
    of importance lost; ``"flops"``: latency saved per multiply-accumulate removed), until the plan's counted
    FLOPs (``size``) are at or below ``target_flops`` of the dense model; None when the groups run out."""
    groups = {g.id: g for g in analysis.groups}
    caps = {gid: max_removable(g, round_to, min_width) for gid, g in groups.items()}
    costs = {gid: removal_costs(g, scores[gid]) for gid, g in groups.items() if caps[gid] > 0}
    active = [gid for gid in costs if model.by_group.get(gid)]
    counts: dict[int, int] = {}

    def step(gid: int) -> int:
        n, width, q = counts.get(gid, 0), groups[gid].width, chunk_size(groups[gid], round_to)
        return min((width - n) % q or q, caps[gid] - n)  # first realign the width, then whole chunks

    def value(gid: int) -> float:
        k, n = step(gid), counts.get(gid, 0)
        if k <= 0:
            return -math.inf
        before = model.group_cost(gid, counts), model.group_macs(gid, counts)
        counts[gid] = n + k
        saved, macs = before[0] - model.group_cost(gid, counts), before[1] - model.group_macs(gid, counts)
        counts[gid] = n
        if saved <= 0 or macs <= 0:
            return -math.inf
        return saved / macs if ranking == "flops" else saved / (float(costs[gid][n : n + k].sum()) + 1e-9)

    while True:
        plan = plan_from_counts(analysis.groups, scores, counts, round_to, min_width)
        if size(plan) <= target_flops * size.dense:
            return plan
        values = {gid: value(gid) for gid in active}
        best = max(values, key=values.__getitem__, default=None)
        if best is None or values[best] == -math.inf:
            return None
        counts[best] = counts.get(best, 0) + step(best)


def plan_flops_by_latency(
    analysis: Analysis,
    example_inputs: Any,
    target_flops: float,
    backend: str = "ort",
    *,
    precision: str = "int8",
    threads: int = 1,
    table: LatencyTable | None = None,
    latency_model: LatencyModel | None = None,
    importance: str | Importance = "l2",
    round_to: int | None = None,
    min_width: int = 1,
    rankings: tuple[str, ...] = RANKINGS,
    progress: Callable[[int, int], None] | None = None,
    activations: bool = False,
) -> FlopsLatencyResult:
    """Plan channel removal so the model keeps at most ``target_flops`` of its FLOPs, spending the cut where
    ``backend``'s latency at ``precision`` falls most.

    One plan per ranking in ``rankings`` (:func:`greedy_to_flops`; ``"uniform"``: the plain FLOPs target,
    :func:`fxprune.targets.plan_for_target`), each at or below the target by count; the plan whose latency
    the layer table estimates lowest is returned. ``round_to`` defaults to the backend's alignment at
    ``precision``; the table defaults to the on-disk one of the backend, precision and thread count
    (missing layer shapes are measured first). ``activations``: time each conv followed by SiLU together
    with it, as deployed (:meth:`LatencyModel.build`). Raises ValueError when no ranking reaches the target.
    """
    if not 0.0 < target_flops < 1.0:
        raise ValueError(f"target_flops must be in (0, 1), got {target_flops}")
    unknown = sorted(set(rankings) - set(RANKINGS))
    if unknown or not rankings:
        raise ValueError(f"rankings must be among {', '.join(RANKINGS)}; got {list(rankings)}")
    if round_to is None:
        round_to = default_round_to(backend, precision)
    scores = analysis.scores(importance)
    if latency_model is None:
        table = table or LatencyTable(backend, precision, threads)
        with frozen_heap():
            latency_model = LatencyModel.build(
                analysis, example_inputs, table, round_to, progress, scores, activations=activations
            )
    size = SlimmedSize(analysis, example_inputs, "flops")
    plans: dict[str, Plan] = {}
    for ranking in rankings:
        if ranking == "uniform":
            with contextlib.suppress(ValueError):  # the target may be out of reach of a uniform share
                plans[ranking] = plan_for_target(
                    analysis, example_inputs, target_flops, importance=importance, round_to=round_to,
                    min_width=min_width,
                )  # fmt: skip
            continue
        plan = greedy_to_flops(
            analysis, scores, latency_model, size, target_flops, ranking, round_to, min_width
        )
        if plan is not None:
            plans[ranking] = plan
    if not plans:
        raise ValueError(
            f"cannot reach {target_flops:.0%} of the dense FLOPs with {round_to}-channel steps: too many "
            "channels are frozen or too narrow; lower round_to"
        )
    estimates = {
        k: latency_model.ratio({gid: len(idx) for gid, idx in p.remove.items()}) for k, p in plans.items()
    }
    chosen = min(estimates, key=estimates.__getitem__)
    plan = plans[chosen]
    fraction = size(plan) / size.dense
    return FlopsLatencyResult(plan, target_flops, fraction, estimates[chosen], round_to, chosen, estimates)


@dataclass
class FlopsLatencyPlanner:
    """A :class:`fxprune.plan.Planner` for a FLOPs target met where ``backend``'s latency at ``precision``
    falls most (see :func:`plan_flops_by_latency`; ``activations``: convs timed with their SiLU);
    ``result`` holds the last :class:`FlopsLatencyResult`."""

    target_flops: float
    backend: str = "ort"
    precision: str = "int8"
    round_to: int | None = None
    min_width: int = 1
    threads: int = 1
    table: LatencyTable | None = None
    rankings: tuple[str, ...] = RANKINGS
    progress: Callable[[int, int], None] | None = None
    activations: bool = False
    result: FlopsLatencyResult | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        if not 0.0 < float(self.target_flops) < 1.0:
            raise ValueError(f"target_flops must be in (0, 1), got {self.target_flops}")

    def plan(self, analysis: Analysis, example_inputs: Any, importance: str | Importance = "l2") -> Plan:
        self.result = plan_flops_by_latency(
            analysis,
            example_inputs,
            self.target_flops,
            self.backend,
            precision=self.precision,
            threads=self.threads,
            table=self.table,
            importance=importance,
            round_to=self.round_to,
            min_width=self.min_width,
            rankings=self.rankings,
            progress=self.progress,
            activations=self.activations,
        )
        return self.result.plan
