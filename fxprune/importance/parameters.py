"""Parameters looked up by name, from one name table per scoring pass.

Scoring every group reads a few hundred parameters by their dotted names; ``Module.get_parameter`` walks the
module tree for each. Inside :func:`parameter_table` the names resolve from one table built at the start.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from ..capture.modules import named_tensors

__all__ = ["parameter", "parameter_table"]

_TABLES: dict[int, dict[str, torch.Tensor]] = {}


@contextmanager
def parameter_table(model: nn.Module) -> Iterator[None]:
    """Within the block, :func:`parameter` on ``model`` reads a name table built once (nested use is fine).

    The model's parameters must not be replaced inside the block.
    """
    key = id(model)
    if key in _TABLES:
        yield
        return
    _TABLES[key] = dict(named_tensors(model, buffers=False))
    try:
        yield
    finally:
        del _TABLES[key]


def parameter(model: nn.Module, name: str) -> torch.Tensor | None:
    """The parameter called ``name`` in ``model``, None when there is none (a buffer, a missing name)."""
    table = _TABLES.get(id(model))
    if table is not None:
        return table.get(name)
    try:
        return model.get_parameter(name)
    except AttributeError:
        return None  # a buffer (BN running statistics): not a weight
