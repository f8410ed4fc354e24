"""Shape-only runs: a model's parameters and buffers swapped for ``meta`` tensors in place, then put back.

A forward pass on meta tensors computes every shape and no value, and costs a fraction of one on fake
tensors (no per-op wrapper). The swap changes no module object and copies no weight: the meta tensors
stand in for the real ones while the ``with`` block runs, and tied parameters stay tied (one meta tensor
per real one).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .inputs import map_tensors
from .modules import distinct_modules

__all__ = ["meta_empty", "meta_inputs", "meta_like", "on_meta", "outside_python_modes"]

# Python dispatch (modes such as a cost recorder) and torch-function modes (``torch.device``) left out.
_PYTHON_KEYS = torch._C.DispatchKeySet(torch._C.DispatchKey.Python) | torch._C.DispatchKeySet(
    torch._C.DispatchKey.PythonTLSSnapshot
)


def meta_empty(shape: tuple[int, ...] | list[int], dtype: torch.dtype) -> torch.Tensor:
    """A contiguous meta tensor made without going through the active Python modes (a few microseconds
    instead of tens inside a dispatch mode): for results whose shape the caller computed itself."""
    with outside_python_modes():
        return torch.empty(shape, dtype=dtype, device="meta")


@contextmanager
def outside_python_modes() -> Iterator[None]:
    """Tensor ops in the block skip the active Python dispatch and torch-function modes (a view the caller
    notes itself, as :func:`meta_empty` makes a result)."""
    with torch._C._ExcludeDispatchKeyGuard(_PYTHON_KEYS), torch._C.DisableTorchFunction():
        yield


def meta_like(t: torch.Tensor) -> torch.Tensor:
    """A meta tensor with ``t``'s shape, strides and dtype (a Parameter stays a Parameter)."""
    meta = torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device="meta")
    return nn.Parameter(meta, requires_grad=t.requires_grad) if isinstance(t, nn.Parameter) else meta


def meta_inputs(example_inputs: Any) -> Any:
    """The example inputs with every tensor on the meta device (nested tuples, lists, dicts)."""
    return map_tensors(example_inputs, lambda t: t.to("meta"))


@contextmanager
def on_meta(roots: Iterable[nn.Module], factories: bool = True) -> Iterator[dict[int, torch.Tensor]]:
    """Every parameter and buffer under ``roots`` replaced by a meta tensor for the ``with`` block.

    Yields ``{id(real tensor): meta tensor}``. With ``factories``, factory calls without a device
    (``torch.zeros(n)`` in a forward) also make meta tensors inside the block (``torch.device("meta")``,
    a torch-function mode that every tensor method call then goes through; False leaves it to the caller
    to enter around the model's own code). Everything is put back on exit, also after an error.
    """
    memo: dict[int, torch.Tensor] = {}
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    seen: set[int] = set()
    try:
        for root in roots:
            for m in distinct_modules(root):
                if id(m) in seen:
                    continue
                seen.add(id(m))
                for slots in (m._parameters, m._buffers):
                    for name, t in list(slots.items()):
                        if t is None or t.device.type == "meta":
                            continue
                        meta = memo.get(id(t))
                        if meta is None:
                            meta = memo[id(t)] = meta_like(t)
                        swapped.append((slots, name, t))
                        slots[name] = meta
        with torch.device("meta") if factories else contextlib.nullcontext():
            yield memo
    finally:
        for slots, name, t in reversed(swapped):
            slots[name] = t
