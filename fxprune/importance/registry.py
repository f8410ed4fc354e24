"""A registry of importance criteria, looked up by name (``importance="l1"``)."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from torch import nn

Importance = Callable[[nn.Module, "object"], np.ndarray]
_REGISTRY: dict[str, Importance] = {}


def register_importance(name: str) -> Callable[[Importance], Importance]:
    """Register ``fn(model, group) -> scores`` (one float per atom) under ``name``."""

    def deco(fn: Importance) -> Importance:
        _REGISTRY[name] = fn
        return fn

    return deco


def get_importance(name_or_fn: str | Importance) -> Importance:
    """Resolve an importance criterion given by name or as a callable."""
    if callable(name_or_fn):
        return name_or_fn
    if name_or_fn not in _REGISTRY:
        raise ValueError(f"unknown importance {name_or_fn!r}; known: {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name_or_fn]
