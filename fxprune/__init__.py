"""fxprune: structured pruning that discovers coupled channels with torch.fx and slims models in place."""

from .analysis import Analysis, analyze
from .capture import CaptureError
from .io import load, save
from .prune import PruneReport, VerificationError, apply_plan, prune
from .regularize import Pruner

__version__ = "0.1.0"

__all__ = [
    "Analysis",
    "CaptureError",
    "PruneReport",
    "Pruner",
    "VerificationError",
    "analyze",
    "apply_plan",
    "load",
    "prune",
    "save",
]
