"""The planner extension point: ``fxprune.prune(model, x, planner=...)`` asks a planner for the plan.

Anything with a ``plan(analysis, example_inputs, importance) -> Plan`` method is a planner. The core
provides :class:`RatioPlanner` (a fraction of every group) and ``fxprune.targets.SizeTargetPlanner``
(a FLOPs or parameter target); ``fxprune.deploy.LatencyPlanner`` plans for a latency budget on a runtime.
A planner receives the analysis ``prune`` already made: it must not analyse the model again, and it must
leave ``analysis.model`` unchanged (``prune`` slims it afterwards).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ..importance.registry import Importance
from .planner import Plan

if TYPE_CHECKING:
    from ..analysis import Analysis

__all__ = ["Planner", "RatioPlanner"]


@runtime_checkable
class Planner(Protocol):
    """Chooses the atoms to remove from an analysed model."""

    def plan(self, analysis: Analysis, example_inputs: Any, importance: str | Importance) -> Plan:
        """The plan for ``analysis.model``; ``importance`` names or computes the atom scores."""
        ...


@dataclass
class RatioPlanner:
    """Remove ``ratio`` of every group's prunable atoms (``ratios``: per-module-glob ratios).

    See :func:`fxprune.plan.make_plan` for ``round_to`` (None: :data:`fxprune.plan.DEFAULT_ROUND_TO`),
    ``min_width`` and ``global_ranking``.
    """

    ratio: float = 0.5
    ratios: dict[str, float] | None = None
    round_to: int | None = None
    min_width: int = 1
    global_ranking: bool = False

    def plan(self, analysis: Analysis, example_inputs: Any, importance: str | Importance = "l2") -> Plan:
        return analysis.plan(
            self.ratio,
            importance=importance,
            ratios=self.ratios,
            round_to=self.round_to,
            min_width=self.min_width,
            global_ranking=self.global_ranking,
        )
