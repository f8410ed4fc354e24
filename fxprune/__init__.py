"""fxprune: structured pruning that discovers coupled channels with torch.fx and slims models in place."""

from .analysis import Analysis, analyze
from .capture import CaptureError
from .capture.fit import InputMismatchError
from .groups.grouping import Group
from .io import load, save
from .plan import Plan, Planner
from .prune import PruneReport, VerificationError, apply_plan, prune
from .regularize import Pruner
from .targets import plan_for_target

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "CaptureError",
    "Group",
    "InputMismatchError",
    "Plan",
    "Planner",
    "PruneReport",
    "Pruner",
    "VerificationError",
    "analyze",
    "apply_plan",
    "load",
    "plan_for_target",
    "prune",
    "save",
]
