"""Verification: the slim model against the original with the removed channels masked out."""

from .compare import compare_outputs
from .masking import masked_copy

__all__ = ["compare_outputs", "masked_copy"]
