"""Verification: the slim model against the original with the removed channels masked out."""

from .compare import compare_outputs
from .masking import MaskSet, masked, masked_copy, removed_slots

__all__ = ["MaskSet", "compare_outputs", "masked", "masked_copy", "removed_slots"]
