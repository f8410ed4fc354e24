"""Where run-time sizes come from: ``C = x.shape[1]`` remembers the channel slots of x's dim 1.

A reshape whose size argument was read from a channel dim must keep that dim's width consistent
with its own output (MaxViT reshapes attention output to the *input's* width).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass
class SizeInfo:
    """A ``torch.Size`` read from a tensor: the labels of each of its dims (None = not channels)."""

    dims: list[np.ndarray | None]


@dataclass
class IntInfo:
    """An int computed from sizes: the channel label arrays it was derived from."""

    sources: list[np.ndarray] = field(default_factory=list)


def size_of(labels: dict | None, ndim: int, dim: int | None) -> SizeInfo | IntInfo:
    labels = labels or {}
    if dim is None:
        return SizeInfo([labels.get(d) for d in range(ndim)])
    d = dim % ndim
    return IntInfo([labels[d]] if d in labels else [])


def merge(*infos) -> IntInfo | None:
    """Provenance of an arithmetic result."""
    sources = [s for i in infos if isinstance(i, IntInfo) for s in i.sources]
    return IntInfo(sources) if sources else None
