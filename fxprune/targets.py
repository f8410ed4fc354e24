"""Planning to a FLOPs or parameter target: bisect the ratio, counting each candidate's slimmed copy."""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from .analysis import Analysis
from .capture.inputs import ExampleInputs
from .importance.registry import Importance
from .measure import count_flops, count_params
from .plan import Plan, bisect_ratio, make_plan
from .slim import slim_model

__all__ = ["METRICS", "SizeTargetPlanner", "plan_for_target", "slimmed_copy"]

METRICS = ("flops", "params")


def slimmed_copy(analysis: Analysis, plan: Plan) -> nn.Module:
    """A slimmed deep copy of ``analysis.model`` in eval mode (the analysed model itself is left alone)."""
    trial = copy.deepcopy(analysis.model)
    slim_model(trial, analysis.groups, plan, analysis.constants)
    return trial.eval()


def _counter(metric: str, example_inputs: ExampleInputs) -> Callable[[nn.Module], int]:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    return (lambda m: count_flops(m, example_inputs)) if metric == "flops" else count_params


def plan_for_target(
    analysis: Analysis,
    example_inputs: ExampleInputs,
    target: float,
    metric: str = "flops",
    *,
    importance: str | Importance = "l2",
    ratios: dict[str, float] | None = None,
    round_to: int = 1,
    min_width: int = 1,
    global_ranking: bool = False,
) -> Plan:
    """The plan whose slimmed model keeps at most ``target`` x the dense FLOPs (or params, ``metric``).

    The scores are computed once; :func:`fxprune.plan.bisect_ratio` then searches the ratio of
    :func:`fxprune.plan.make_plan` (same ``ratios``, ``round_to``, ``min_width``, ``global_ranking``),
    counting a slimmed copy of every candidate (the analysed model is not changed).
    """
    count = _counter(metric, example_inputs)
    if not 0.0 < target < 1.0:
        raise ValueError(f"target {metric} fraction must be in (0, 1), got {target}")
    analysis.check_ratio_patterns(ratios)
    scores = analysis.scores(importance)
    dense = count(analysis.model)

    def plan_at(ratio: float) -> Plan:
        return make_plan(analysis.groups, scores, ratio, ratios, round_to, min_width, global_ranking)

    return bisect_ratio(
        plan_at, lambda plan: count(slimmed_copy(analysis, plan)) / dense, target, what=metric
    )


@dataclass
class SizeTargetPlanner:
    """A :class:`fxprune.plan.Planner` for a FLOPs or parameter target (see :func:`plan_for_target`)."""

    target: float
    metric: str = "flops"
    ratios: dict[str, float] | None = None
    round_to: int = 1
    min_width: int = 1
    global_ranking: bool = False

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
        )
