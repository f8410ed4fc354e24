"""Planning to a FLOPs or parameter target: bisect the ratio, counting each candidate without slimming it.

Candidates are counted from the analysis (:class:`PlanCosts`: torch's FLOP formulas evaluated on the shapes
a plan leaves, recorded once during the analysis; a few milliseconds per plan). Where the analysis could
not follow every operand's width, candidates are slimmed on a shape-only copy of the model (parameters and
buffers on the ``meta`` device) and counted there, or on real copies when the model cannot run on meta.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .analysis import Analysis
from .capture.inputs import ExampleInputs, as_args_kwargs, map_tensors, tensor_shapes
from .groups.grouping import Group
from .importance.registry import Importance
from .measure import count_flops, count_params
from .plan import Plan, bisect_ratio, fill_up, make_plan, own_ratio, prunable_atoms, resolve_round_to
from .slim import slim_model

__all__ = [
    "check_cost_weight",
    "METRICS",
    "PlanCosts",
    "SizeTargetPlanner",
    "SlimmedSize",
    "plan_for_target",
    "ranking_weights",
    "slimmed_copy",
]

METRICS = ("flops", "params")


def slimmed_copy(analysis: Analysis, plan: Plan) -> nn.Module:
    """A slimmed deep copy of ``analysis.model`` in eval mode (the analysed model itself is left alone)."""
    trial = copy.deepcopy(analysis.model)
    slim_model(trial, analysis.groups, plan, analysis.constants)
    return trial.eval()


def _counter(metric: str) -> Callable[[nn.Module, ExampleInputs], int]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return count_flops if metric == "flops" else lambda model, _: count_params(model)


def _meta_copy(model: nn.Module) -> nn.Module:
    """A deep copy of ``model`` whose parameters and buffers are meta tensors (shapes, no data)."""
    memo: dict[int, Any] = {}
    for t in itertools.chain(model.parameters(), model.buffers()):
        meta = torch.empty_like(t, device="meta")
        memo[id(t)] = (
            nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta
        )
    return copy.deepcopy(model, memo)


class PlanCosts:
    """FLOPs and parameters of ``analysis.model`` once slimmed by a plan, counted from the analysis.

    Uses the cost table recorded during the analysis (:class:`fxprune.groups.costs.CostTable`); ``exact``
    is False when there is none (the analysis ran on fake or real tensors) or when it could not follow
    the width of some operand, and then the figures must be counted on a slimmed model instead.
    """

    def __init__(self, analysis: Analysis) -> None:
        self.analysis, self.table = analysis, analysis.propagation.costs
        self.exact = self.table is not None and self.table.exact

    def fits(self, example_inputs: ExampleInputs) -> bool:
        """Whether the table is exact and was recorded on inputs of these shapes."""
        args, kwargs = as_args_kwargs(example_inputs)
        return self.exact and tensor_shapes((tuple(args), dict(kwargs))) == self.table.input_shapes

    def kept(self, plan: Plan) -> np.ndarray:
        """Fraction kept of every factor of the cost table under ``plan``."""
        removed = [g.atoms[plan.remove[g.id]] for g in self.analysis.groups if g.id in plan.remove]
        roots = np.concatenate(removed).astype(np.int64) if removed else np.zeros(0, dtype=np.int64)
        return self.table.kept_fractions(self.analysis.propagation.table, roots)

    def flops(self, plan: Plan) -> int:
        return self.table.flops(self.kept(plan))

    def params(self, plan: Plan) -> int:
        return self.table.param_count(self.kept(plan))


class SlimmedSize:
    """FLOPs (or params, ``metric``) of ``analysis.model`` once slimmed by a plan: ``SlimmedSize(...)(plan)``.

    ``dense`` is the dense model's figure. Plans are counted from the analysis (:class:`PlanCosts`) when it
    can, else on shape-only (meta) copies when the dense model counts the same on one, else on real
    copies; the analysed model is never changed.
    """

    def __init__(self, analysis: Analysis, example_inputs: ExampleInputs, metric: str = "flops") -> None:
        self.analysis, self.example_inputs, self.count = analysis, example_inputs, _counter(metric)
        self.costs = PlanCosts(analysis)
        if self.costs.fits(example_inputs):
            self.by_plan = self.costs.flops if metric == "flops" else self.costs.params
            self.dense = self.by_plan(Plan())
            return
        self.by_plan = None
        self.dense = self.count(analysis.model, example_inputs)
        self.meta_inputs = map_tensors(example_inputs, lambda t: t.to("meta"))
        try:
            self.on_meta = self.count(_meta_copy(analysis.model), self.meta_inputs) == self.dense
        except Exception:  # an op without a meta kernel, a tensor attribute that is not a buffer, ...
            self.on_meta = False

    def __call__(self, plan: Plan) -> int:
        if self.by_plan is not None:
            return self.by_plan(plan)
        a = self.analysis
        if self.on_meta:
            trial = _meta_copy(a.model)
            try:
                slim_model(trial, a.groups, plan, a.constants)
                return self.count(trial, self.meta_inputs)
            except Exception:
                self.on_meta = False
        return self.count(slimmed_copy(a, plan), self.example_inputs)


def check_cost_weight(cost_weight: float, *, sized: bool, global_ranking: bool) -> None:
    """Refuse a ``cost_weight`` that is not a number, or non-zero without a FLOPs/params target (``sized``)
    ranked across groups.

    0 (ranking by importance alone) goes with any plan; other values weight the global ranking of a size
    target (:func:`ranking_weights`), so anything else is refused with a message rather than ignored.
    """
    if isinstance(cost_weight, bool) or not isinstance(cost_weight, (int, float)):
        raise ValueError(f"cost_weight is a number (0 ranks by importance alone), got {cost_weight!r}")
    if cost_weight and not (sized and global_ranking):
        raise ValueError(
            "cost_weight weights the global ranking of a FLOPs or params target: it needs target_flops "
            "(or target_params) and global_ranking=True"
        )


def ranking_weights(groups: list[Group], size: SlimmedSize, cost_weight: float) -> dict[int, float]:
    """Per group id, ``(cost per channel / mean over groups) ** cost_weight`` for the global ranking.

    A group's cost per channel is what removing one of its prunable atoms saves, counted by ``size`` (FLOPs
    or parameters). With ``cost_weight`` > 0 the channels that cost most (high-resolution layers, for FLOPs)
    rank higher and stay longer, so a target is met by taking more of the cheap ones; < 0 does the opposite.
    A group whose one-atom removal cannot be counted gets weight 1.
    """
    saved: dict[int, float] = {}
    for g in groups:
        atoms = prunable_atoms(g)
        if not len(atoms):
            continue
        try:
            saved[g.id] = float(max(size.dense - size(Plan(remove={g.id: atoms[:1]})), 1))
        except Exception:  # a one-atom removal that a chunked group cannot take on a slimmed copy
            continue
    if not saved:
        return {}
    mean = sum(saved.values()) / len(saved)
    return {gid: (v / mean) ** cost_weight for gid, v in saved.items()}


def plan_for_target(
    analysis: Analysis,
    example_inputs: ExampleInputs,
    target: float,
    metric: str = "flops",
    *,
    importance: str | Importance = "l2",
    ratios: dict[str, float] | None = None,
    round_to: int | None = None,
    min_width: int = 1,
    global_ranking: bool = False,
    fill: bool = True,
    cost_weight: float = 0.0,
) -> Plan:
    """The plan whose slimmed model keeps at most ``target`` x the dense FLOPs (or params, ``metric``).

    The scores are computed once; :func:`fxprune.plan.bisect_ratio` then searches the ratio of
    :func:`fxprune.plan.make_plan` (same ``ratios``, ``round_to``, ``min_width``, ``global_ranking``),
    counting every candidate with :class:`SlimmedSize` (the analysed model is not changed). ``round_to``
    None is :data:`fxprune.plan.DEFAULT_ROUND_TO`. With ``fill`` (default), :func:`fxprune.plan.fill_up`
    then gives channels back, one aligned block at a time and most important first, while the count stays
    at or below the target (groups with their own entry in ``ratios`` keep it): aligned widths make the
    ratio's cost curve jump, and the bisection alone can land far below the target. ``cost_weight``
    (with ``global_ranking``) weights each group's scores by its cost per channel (:func:`ranking_weights`).
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target {metric} fraction must be in (0, 1), got {target}")
    analysis.check_ratio_patterns(ratios)
    round_to = resolve_round_to(round_to)
    scores = analysis.scores(importance)
    size = SlimmedSize(analysis, example_inputs, metric)
    check_cost_weight(cost_weight, sized=True, global_ranking=global_ranking)
    weights = ranking_weights(analysis.groups, size, cost_weight) if cost_weight else None

    def plan_at(ratio: float) -> Plan:
        return make_plan(analysis.groups, scores, ratio, ratios, round_to, min_width, global_ranking, weights)

    fraction = lambda plan: size(plan) / size.dense  # noqa: E731
    plan = bisect_ratio(plan_at, fraction, target, what=metric)
    if not fill:
        return plan
    with_own_ratio = {g.id for g in analysis.groups if own_ratio(g, ratios) is not None}
    trials = None if size.by_plan is not None else FILL_TRIALS_ON_COPIES
    return fill_up(
        analysis.groups,
        scores,
        plan,
        fraction,
        target,
        round_to=round_to,
        min_width=min_width,
        skip=with_own_ratio,
        max_trials=trials,
    )


FILL_TRIALS_ON_COPIES = 32
"""Most blocks :func:`plan_for_target` tries to give back when plans are counted on slimmed copies."""


@dataclass
class SizeTargetPlanner:
    """A :class:`fxprune.plan.Planner` for a FLOPs or parameter target (see :func:`plan_for_target`)."""

    target: float
    metric: str = "flops"
    ratios: dict[str, float] | None = None
    round_to: int | None = None
    min_width: int = 1
    global_ranking: bool = False
    fill: bool = True
    cost_weight: float = 0.0

    def plan(self, analysis: Analysis, example_inputs: Any, importance: str | Importance = "l2") -> Plan:
        return plan_for_target(
            analysis,
            example_inputs,
            self.target,
            self.metric,
            importance=importance,
            ratios=self.ratios,
            round_to=self.round_to,
            min_width=self.min_width,
            global_ranking=self.global_ranking,
            fill=self.fill,
            cost_weight=self.cost_weight,
        )
