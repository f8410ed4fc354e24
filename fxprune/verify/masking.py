"""The masked original: a copy of the model whose layers see zeros in every removed channel."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..groups.slots import SlotTable

__all__ = ["masked_copy"]


def _mask_for(table: SlotTable, labels: dict | None, removed: set[int], ndim: int) -> list[torch.Tensor]:
    masks = []
    for d, lab in (labels or {}).items():
        keep = ~np.isin(table.roots(lab), list(removed))
        if keep.all():
            continue
        shape = [1] * ndim
        shape[d] = len(keep)
        masks.append(torch.as_tensor(keep, dtype=torch.float32).reshape(shape))
    return masks


def _apply(value: Any, labels: Any, table: SlotTable, removed: set[int]) -> Any:
    if isinstance(value, torch.Tensor) and isinstance(labels, dict):
        for m in _mask_for(table, labels, removed, value.dim()):
            value = value * m.to(value.device, value.dtype)
        return value
    if isinstance(value, (list, tuple)) and isinstance(labels, (list, tuple)) and len(labels) == len(value):
        out = [_apply(v, lab, table, removed) for v, lab in zip(value, labels)]
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    return value


def masked_copy(
    model: nn.Module, module_io: dict[str, tuple[Any, Any]], table: SlotTable, removed: set[int]
) -> nn.Module:
    """A deep copy of ``model`` whose leaf layers zero the removed channels of their inputs and outputs."""
    masked = copy.deepcopy(model)
    for name, calls in module_io.items():
        try:
            m = masked.get_submodule(name)
        except AttributeError:
            continue
        _CallMask(calls, table, removed).attach(m)
    return masked


class _CallMask:
    """Masks for a module called several times per forward (a shared ReLU): one entry per call, cycling."""

    def __init__(self, calls: list[tuple[Any, Any]], table: SlotTable, removed: set[int]):
        self.calls, self.table, self.removed, self.i = calls, table, removed, 0

    def attach(self, m: nn.Module) -> None:
        m.register_forward_pre_hook(self.pre)
        m.register_forward_hook(self.post)

    def pre(self, mod: nn.Module, args: tuple) -> tuple | None:
        in_labels = self.calls[self.i % len(self.calls)][0]
        first = in_labels[0] if isinstance(in_labels, (list, tuple)) and in_labels else None
        if args and isinstance(args[0], torch.Tensor):
            return (_apply(args[0], first, self.table, self.removed), *args[1:])
        return None

    def post(self, mod: nn.Module, args: tuple, out: Any) -> Any:
        out_labels = self.calls[self.i % len(self.calls)][1]
        self.i += 1
        return _apply(out, out_labels, self.table, self.removed)
