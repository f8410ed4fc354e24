"""Physical slimming: slice parameters and buffers in place and update layer attributes."""

from .adapters import register_adapter
from .slim import slim_model

__all__ = ["register_adapter", "slim_model"]
