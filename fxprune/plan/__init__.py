"""Pruning plans: which atoms of which groups to remove."""

from .planner import Plan, make_plan, plan_from_counts

__all__ = ["Plan", "make_plan", "plan_from_counts"]
