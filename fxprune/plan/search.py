"""Bisection over the pruning ratio until a plan's cost (FLOPs, parameters, latency...) meets a target."""

from __future__ import annotations

from collections.abc import Callable

from .planner import Plan

__all__ = ["bisect_ratio"]


def bisect_ratio(
    plan_at: Callable[[float], Plan],
    fraction_of: Callable[[Plan], float],
    target: float,
    *,
    steps: int = 12,
    highest: float = 0.99,
    what: str = "cost",
) -> Plan:
    """The plan of the smallest ratio found whose cost fraction is at or below ``target``.

    ``plan_at(ratio)`` makes a plan; ``fraction_of(plan)`` is its cost relative to the dense model (for
    example FLOPs after slimming / dense FLOPs), assumed to fall as the ratio grows. ``steps`` halvings of
    ``[0, highest]`` are made. Raises ``ValueError`` when even ``highest`` does not reach the target (too
    many channels are frozen); ``what`` names the cost in that message.
    """
    if not 0.0 < target < 1.0:
        raise ValueError(f"target {what} fraction must be in (0, 1), got {target}")
    lo, hi, best = 0.0, highest, None
    for _ in range(steps):
        mid = (lo + hi) / 2
        plan = plan_at(mid)
        if fraction_of(plan) > target:
            lo = mid
        else:
            hi, best = mid, plan
    if best is None:
        raise ValueError(f"cannot reach {target:.0%} of the dense {what}: too many channels are frozen")
    return best
