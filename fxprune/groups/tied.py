"""Parameters shared between modules (``self.c.weight = self.b.weight``): one tensor, one set of channels.

Layer handlers name a parameter by the module that uses it, so a tensor tied across modules gets one block
per name. :func:`couple_tied` couples those blocks dimension by dimension, so that the tied channels form
one group and slimming cuts the shared tensor once.
"""

from __future__ import annotations

import numpy as np
from torch import nn

from ..capture.modules import named_tensors
from .slots import SlotTable

__all__ = ["couple_tied", "tensor_aliases"]


def tensor_aliases(model: nn.Module) -> dict[str, str]:
    """``{name: first name}`` of every parameter and buffer reachable under more than one name."""
    first: dict[int, str] = {}
    aliases: dict[str, str] = {}
    for name, t in named_tensors(model):
        owner = first.setdefault(id(t), name)
        if owner != name:
            aliases[name] = owner
    return aliases


def couple_tied(table: SlotTable, aliases: dict[str, str]) -> None:
    """Couple the blocks that slice the same tensor dimension under different names.

    Dimensions of different sizes cannot be the same tensor's: they are frozen rather than coupled.
    """
    if not aliases:
        return
    seen: dict[tuple[str, int], np.ndarray] = {}
    for block in table.blocks:
        for name, dim in block.members:
            key = (aliases.get(name, name), dim)
            slots = seen.setdefault(key, block.slots)
            if slots is block.slots:
                continue
            if len(slots) == block.size:
                table.union(slots, block.slots)
            else:
                table.freeze(np.concatenate([slots, block.slots]), f"{key[0]} is tied with another size")
