"""The masked original: a copy of the model whose layers see zeros in every removed channel."""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import torch
from torch import nn

from ..groups.slots import Block, SlotTable

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
    model: nn.Module,
    module_io: dict[str, list[tuple[Any, Any]]],
    table: SlotTable,
    removed: set[int],
    blocks: list[Block] = (),
) -> nn.Module:
    """A deep copy of ``model`` in which the removed channels are zero.

    Leaf layers zero the removed channels of their inputs and outputs, and the parameter slices of the
    removed channels in ``blocks`` are zeroed (channels inside a layer, such as attention heads).
    """
    masked = copy.deepcopy(model)
    params = dict(masked.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for b in blocks:
            gone = np.nonzero(np.isin(table.roots(b.slots), list(removed)))[0]
            if len(gone) == 0:
                continue
            for name, dim in b.members:
                if name in params:
                    params[name].index_fill_(dim, torch.as_tensor(gone, device=params[name].device), 0.0)
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
        if not isinstance(in_labels, (list, tuple)):
            return None
        return tuple(
            _apply(a, lab, self.table, self.removed) if isinstance(a, torch.Tensor) else a
            for a, lab in zip(args, list(in_labels) + [None] * (len(args) - len(in_labels)))
        )

    def post(self, mod: nn.Module, args: tuple, out: Any) -> Any:
        out_labels = self.calls[self.i % len(self.calls)][1]
        self.i += 1
        return _apply(out, out_labels, self.table, self.removed)
