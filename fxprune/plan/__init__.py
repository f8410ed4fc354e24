"""Pruning plans: which atoms of which groups to remove."""

from .planner import Plan, make_plan

__all__ = ["Plan", "make_plan"]
