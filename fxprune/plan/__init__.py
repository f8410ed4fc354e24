"""Pruning plans: which atoms of which groups to remove, and the rules every planner follows."""

from .alignment import DEFAULT_ROUND_TO, resolve_round_to
from .fill import fill_up
from .planner import Plan, group_ratio, make_plan, own_ratio, plan_from_counts
from .protocol import Planner, RatioPlanner
from .rules import (
    chunk_size,
    keep_count,
    max_removable,
    normalized_scores,
    prunable_atoms,
    removal_costs,
    removal_order,
    removal_rank,
)
from .search import bisect_ratio

__all__ = [
    "DEFAULT_ROUND_TO",
    "Plan",
    "Planner",
    "RatioPlanner",
    "bisect_ratio",
    "chunk_size",
    "fill_up",
    "group_ratio",
    "keep_count",
    "make_plan",
    "max_removable",
    "normalized_scores",
    "own_ratio",
    "plan_from_counts",
    "prunable_atoms",
    "removal_costs",
    "removal_order",
    "removal_rank",
    "resolve_round_to",
]
