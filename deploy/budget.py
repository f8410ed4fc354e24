"""Latency-budget planning: remove the channels that buy the most latency per unit of importance lost.

Greedy knapsack over the groups fxprune discovers (as HALP does over layers): every group can lose a
chunk of ``round_to`` atoms; a chunk's value is the latency it saves (from the backend's latency model)
divided by the importance it removes (scores normalised by each group's mean). Chunks are taken, best
first, until the estimated latency fits the budget; a real measurement then checks the result and the
internal target is tightened if needed.
"""

from __future__ import annotations

import contextlib
import math
import re
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from fxprune.analysis import Analysis
from fxprune.groups.grouping import Group
from fxprune.plan import Plan, chunk_size, max_removable, normalized_scores, plan_from_counts, removal_costs
from fxprune.targets import slimmed_copy

from .alignment import default_round_to
from .backends import get_backend
from .latency_model import LatencyModel
from .lut import LatencyTable, frozen_heap
from .onnx_export import export_onnx
from .runtime_latency import measure_latency, speedup

__all__ = [
    "BudgetResult",
    "budget_plan",
    "greedy_counts",
    "kept_importance",
    "next_internal_target",
    "parse_latency_target",
    "plan_for_latency",
]


def parse_latency_target(text: str | float) -> tuple[float, str]:
    """``"0.5x"`` or ``0.5`` -> ``(0.5, "x")`` (fraction of dense latency); ``"12ms"`` -> ``(12.0, "ms")``."""
    if isinstance(text, (int, float)):
        value, unit = float(text), "x"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:e-?[0-9]+)?)\s*(x|ms)?\s*", str(text).lower())
        if m is None:
            raise ValueError(f"latency target must look like 0.5x or 12ms, got {text!r}")
        value, unit = float(m.group(1)), m.group(2) or "x"
    if unit == "x" and not 0.0 < value < 1.0:
        raise ValueError(f"a relative latency target must be in (0, 1), got {value}")
    if value <= 0:
        raise ValueError(f"latency target must be positive, got {value}")
    return value, unit


def greedy_counts(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    model: LatencyModel,
    target_ratio: float,
    round_to: int = 1,
    min_width: int = 1,
    caps: dict[int, int] | None = None,
) -> dict[int, int]:
    """Atoms to remove per group so that ``model.ratio(counts) <= target_ratio`` (or as close as possible).

    ``caps`` lowers the most atoms a group may lose (by default its prunable atoms above the minimum width).
    """
    counts: dict[int, int] = {}
    by_id = {g.id: g for g in groups}
    chunks = {g.id: chunk_size(g, round_to) for g in groups}
    caps = {g.id: min(max_removable(g, round_to, min_width), (caps or {}).get(g.id, g.width)) for g in groups}
    costs = {g.id: removal_costs(g, scores[g.id]) for g in groups if caps[g.id] > 0}
    active = [gid for gid in costs if model.by_group.get(gid)]
    target = target_ratio * model.dense
    current = model.estimate(counts)
    neighbours = {
        gid: {
            other
            for i in model.by_group[gid]
            for other in (model.layers[i].in_group, model.layers[i].out_group)
        }
        for gid in active
    }

    def step(gid: int) -> int:
        n, w, q = counts.get(gid, 0), by_id[gid].width, chunks[gid]
        nxt = (w - n) % q or q  # first realign the width, then whole chunks
        return min(nxt, caps[gid] - n)

    def value(gid: int) -> tuple[float, float]:
        k = step(gid)
        if k <= 0:
            return -math.inf, 0.0
        n = counts.get(gid, 0)
        before = model.group_cost(gid, counts)
        counts[gid] = n + k
        saved = before - model.group_cost(gid, counts)
        counts[gid] = n
        lost = float(costs[gid][n : n + k].sum())
        if saved <= 0:
            return -math.inf, saved
        return saved / (lost + 1e-9), saved

    cache = {gid: value(gid) for gid in active}
    while current > target:
        gid = max(cache, key=lambda g: cache[g][0], default=None)
        if gid is None or cache[gid][0] == -math.inf:
            break
        counts[gid] = counts.get(gid, 0) + step(gid)
        current -= cache[gid][1]
        for other in neighbours[gid] | {gid}:
            if other in cache:
                cache[other] = value(other)
    return {gid: n for gid, n in counts.items() if n > 0}


def budget_plan(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    model: LatencyModel,
    target_ratio: float,
    round_to: int = 1,
    min_width: int = 1,
) -> Plan:
    """:func:`greedy_counts` turned into a plan; groups the plan cannot shrink as far (a layer keeps one
    channel, chunk constraints) are capped and the search rerun so the estimate still meets the target."""
    caps: dict[int, int] = {}
    plan = Plan()
    for _ in range(6):
        counts = greedy_counts(groups, scores, model, target_ratio, round_to, min_width, caps)
        plan = plan_from_counts(groups, scores, counts, round_to, min_width)
        actual = {gid: len(idx) for gid, idx in plan.remove.items()}
        short = {gid: actual.get(gid, 0) for gid, n in counts.items() if actual.get(gid, 0) < n}
        if not short:
            break
        caps.update(short)
    return plan


def kept_importance(groups: list[Group], scores: dict[int, np.ndarray], plan: Plan) -> float:
    """Fraction of the total (group-mean normalised) importance of prunable atoms that ``plan`` keeps."""
    total = kept = 0.0
    for g in groups:
        if g.prunable == 0:
            continue
        costs = removal_costs(g, scores[g.id])
        removed = plan.remove.get(g.id, np.zeros(0, dtype=np.int64))
        total += float(costs.sum())
        kept += float(costs.sum() - normalized_scores(scores[g.id])[removed].sum())
    return kept / max(total, 1e-12)


@dataclass
class BudgetResult:
    """A plan for a latency budget, with the estimates and measurements that led to it."""

    plan: Plan
    target_ratio: float
    estimated_ratio: float
    measured_ratio: float | None
    kept_importance: float
    rounds: list[dict[str, Any]] = field(default_factory=list)
    dense_ms: float | None = None
    backend: str = "ort"
    round_to: int = 1
    internal_target: float | None = None  # the estimated ratio the chosen plan was built for

    @property
    def within(self) -> float | None:
        """Relative deviation of the measured latency ratio from the target."""
        if self.measured_ratio is None:
            return None
        return abs(self.measured_ratio - self.target_ratio) / self.target_ratio


def plan_for_latency(
    analysis: Analysis,
    example_inputs: Any,
    target: str | float,
    backend: str = "ort",
    *,
    latency_model: LatencyModel | None = None,
    table: LatencyTable | None = None,
    importance: Any = "l2",
    round_to: int | None = None,
    min_width: int = 1,
    precision: str = "fp32",
    threads: int = 1,
    validate: bool = True,
    tolerance: float = 0.1,
    max_rounds: int = 4,
    measure_kw: dict[str, Any] | None = None,
    progress: Callable[[int, int], None] | None = None,
    start: float | None = None,
    dense_ms: float | None = None,
) -> BudgetResult:
    """Plan channel removal for a latency ``target`` (``"0.5x"`` of dense or ``"12ms"``) on ``backend``.

    The latency model is built from ``table`` (default: the on-disk table of the backend, precision and
    thread count; missing layer shapes are measured first). ``round_to`` defaults to the backend's
    alignment (``default_round_to``). With ``validate``, each candidate is slimmed
    and timed against the dense model on the backend (interleaved); when the measured ratio misses the
    target by more than ``tolerance``, the internal target is corrected (:func:`next_internal_target`)
    and the plan rebuilt (at most ``max_rounds`` times). The plan whose measured ratio is closest to the
    target without exceeding it by more than ``tolerance`` is returned. ``start`` (the internal target
    of an earlier plan for the same model and target) and ``dense_ms`` (its measured dense latency) let
    a repeated plan begin where an earlier one ended.
    """
    if round_to is None:
        round_to = default_round_to(backend, precision)
    table = table or LatencyTable(backend, precision, threads)
    scores = analysis.scores(importance)
    if latency_model is None:
        latency_model = LatencyModel.build(analysis, example_inputs, table, round_to, progress, scores)
    measure_kw = {"precision": precision, "threads": threads, **(measure_kw or {})}
    value, unit = parse_latency_target(target)
    with frozen_heap(), _dense_source(analysis.model, example_inputs, backend, precision, validate) as dense:
        if dense_ms is None and (unit == "ms" or validate):
            dense_ms = _dense_ms(dense, example_inputs, backend, measure_kw)
        ratio = value if unit == "x" else value / dense_ms
        if not 0.0 < ratio < 1.0:
            raise ValueError(
                f"latency target {target} is {ratio:.2f}x of the dense {dense_ms:.3g} ms; need < 1x"
            )

        def measure(plan: Plan) -> float:
            return _measured_ratio(analysis, dense, plan, example_inputs, backend, measure_kw)

        settings = dict(round_to=round_to, min_width=min_width, tolerance=tolerance, max_rounds=max_rounds)
        check = measure if validate else None
        rounds, best = _search(analysis.groups, scores, latency_model, ratio, start, check, **settings)
    plan, est, measured, internal = best
    kept = kept_importance(analysis.groups, scores, plan)
    return BudgetResult(plan, ratio, est, measured, kept, rounds, dense_ms, backend, round_to, internal)


def _search(
    groups: list[Group],
    scores: dict[int, np.ndarray],
    model: LatencyModel,
    ratio: float,
    start: float | None,
    measure: Callable[[Plan], float] | None,
    *,
    round_to: int,
    min_width: int,
    tolerance: float,
    max_rounds: int,
) -> tuple[list[dict[str, Any]], tuple[Plan, float, float | None, float]]:
    """Plan for the internal (estimated) target, ``measure`` the plan's latency ratio, correct the
    internal target; without ``measure``, one unchecked plan. Returns the rounds and the best
    ``(plan, estimated ratio, measured ratio, internal target)``."""
    internal, rounds, best = (ratio if start is None else start), [], None
    for _ in range(max_rounds if measure is not None else 1):
        plan = budget_plan(groups, scores, model, internal, round_to, min_width)
        est = model.ratio({gid: len(idx) for gid, idx in plan.remove.items()})
        row = {"internal_target": internal, "estimated_ratio": est, "measured_ratio": None}
        rounds.append(row)
        if measure is None:
            best = (plan, est, None, internal)
            break
        measured = measure(plan)
        row["measured_ratio"] = measured
        if best is None or _better(measured, best[2], ratio, tolerance):
            best = (plan, est, measured, internal)
        if abs(measured - ratio) <= tolerance * ratio * 0.5:
            break
        internal = next_internal_target(rounds, ratio)
    return rounds, best


def next_internal_target(rounds: list[dict[str, Any]], target: float) -> float:
    """The estimated ratio to plan for next, from the measured rounds so far (``estimated_ratio`` and
    ``measured_ratio`` of each).

    Measured and estimated ratios are both 1 for the dense model, and latency tends to follow a power of
    the estimate, so: between the closest rounds measured below and above the target, interpolate in
    log-log space; with rounds on one side only, follow the power law through the dense model and the
    round measured closest to the target (its exponent kept within [0.5, 2], so the next target stays
    between ``target ** 2`` and ``target ** 0.5``). Clipped to [0.02, 0.999].
    """
    measured = [r for r in rounds if r.get("measured_ratio") is not None]
    points = [
        (r["estimated_ratio"], r["measured_ratio"])
        for r in measured
        if 0 < r["estimated_ratio"] < 1 and 0 < r["measured_ratio"] < 1
    ]
    below = [p for p in points if p[1] <= target]
    above = [p for p in points if p[1] > target]
    if below and above:
        (e0, m0), (e1, m1) = max(below, key=lambda p: p[1]), min(above, key=lambda p: p[1])
        w = (math.log(target) - math.log(m0)) / (math.log(m1) - math.log(m0))
        nxt = math.exp(math.log(e0) + w * (math.log(e1) - math.log(e0)))
    elif points:
        e, m = min(points, key=lambda p: abs(math.log(p[1] / target)))
        power = min(max(math.log(m) / math.log(e), 0.5), 2.0)  # one noisy round must not jump far
        nxt = target ** (1.0 / power)
    else:  # a round measured at or above the dense latency: scale by the miss
        last = rounds[-1]
        nxt = last["internal_target"] * target / max(last["measured_ratio"], 1e-9)
    return min(0.999, max(0.02, nxt))


def _better(new: float, old: float, target: float, tol: float) -> bool:
    ok_new, ok_old = new <= target * (1 + tol), old <= target * (1 + tol)
    if ok_new != ok_old:
        return ok_new
    return abs(new - target) < abs(old - target)


@contextlib.contextmanager
def _dense_source(
    model: nn.Module, example_inputs: Any, backend: str, precision: str, validate: bool
) -> Iterator[nn.Module | Path]:
    """What the dense model is timed from in every round: for an fp32 ONNX backend, one ONNX export
    (in a temporary folder) instead of one per measurement; otherwise the model itself."""
    if not (validate and precision == "fp32" and get_backend(backend).needs_onnx):
        yield model
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "dense.onnx"
        export_onnx(model, example_inputs, path, check=False, parity=False)
        yield path


def _dense_ms(dense: nn.Module | Path, example_inputs: Any, backend: str, kw: dict[str, Any]) -> float:
    res = measure_latency({"dense": dense}, example_inputs, backend, **kw)
    return res["dense"].median_ms


def _measured_ratio(
    analysis: Analysis, dense: nn.Module | Path, plan: Plan, example_inputs: Any, backend: str, kw: dict
) -> float:
    pruned = slimmed_copy(analysis, plan)
    res = measure_latency({"dense": dense, "pruned": pruned}, example_inputs, backend, **kw)
    return 1.0 / speedup(res["dense"], res["pruned"])
