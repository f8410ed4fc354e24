"""Channel importance: scores per atom of a group (higher = keep)."""

from .registry import get_importance, register_importance
from .magnitude import magnitude_scores  # noqa: F401 - registers the built-in criteria

__all__ = ["get_importance", "register_importance", "magnitude_scores"]
