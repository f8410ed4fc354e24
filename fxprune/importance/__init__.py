"""Channel importance: scores per atom of a group (higher = keep)."""

from .magnitude import magnitude_scores  # noqa: F401 - registers the built-in criteria
from .registry import get_importance, register_importance

__all__ = ["get_importance", "register_importance", "magnitude_scores"]
