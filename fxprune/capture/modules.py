"""A model's module tree walked once per call: modules, parameters and buffers by name.

One ``prune()`` call reads the model's modules, parameters and buffers by name some forty times (capture,
propagation, masking, slimming, counting), each a recursive walk of the module tree. Inside
:func:`module_table` the tree is walked once; parameters and buffers are read from each module's own
dicts on every call, so tensors replaced inside the block (slimming) are seen. The module tree itself must
not change inside the block. Outside it every function walks the tree as ``nn.Module`` does.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import nn

__all__ = ["distinct_modules", "module_table", "named_modules", "named_tensors", "walks_tree_once"]

F = TypeVar("F", bound=Callable[..., Any])

_TABLES: dict[int, tuple[nn.Module, dict[str, nn.Module]]] = {}


@contextmanager
def module_table(*models: nn.Module) -> Iterator[None]:
    """Walk each model's module tree once for the block (nested use is fine)."""
    added = [m for m in dict.fromkeys(models) if id(m) not in _TABLES]
    for m in added:
        _TABLES[id(m)] = (m, dict(m.named_modules(remove_duplicate=False)))
    try:
        yield
    finally:
        for m in added:
            del _TABLES[id(m)]


def named_modules(model: nn.Module) -> dict[str, nn.Module]:
    """``dict(model.named_modules(remove_duplicate=False))``: a module reachable twice is listed twice."""
    hit = _TABLES.get(id(model))
    if hit is not None and hit[0] is model:
        return hit[1]
    return dict(model.named_modules(remove_duplicate=False))


def distinct_modules(model: nn.Module) -> list[nn.Module]:
    """Every module once, in ``model.modules()`` order."""
    return list({id(m): m for m in named_modules(model).values()}.values())


def named_tensors(
    model: nn.Module, parameters: bool = True, buffers: bool = True, remove_duplicate: bool = False
) -> list[tuple[str, torch.Tensor]]:
    """Parameters, then buffers, by name, as ``named_parameters``/``named_buffers`` list them.

    ``remove_duplicate=False`` lists a tensor under each of its names; True lists it once, under its first.
    """
    modules = named_modules(model)
    out: list[tuple[str, torch.Tensor]] = []
    for attr, wanted in (("_parameters", parameters), ("_buffers", buffers)):
        if not wanted:
            continue
        seen: set[int] = set()
        for prefix, m in modules.items():
            for k, v in getattr(m, attr).items():
                if v is None:
                    continue
                if remove_duplicate:
                    if id(v) in seen:
                        continue
                    seen.add(id(v))
                out.append((f"{prefix}.{k}" if prefix else k, v))
    return out


def walks_tree_once(model_of: Callable[..., nn.Module]) -> Callable[[F], F]:
    """Decorate a function so that it runs inside :func:`module_table` of ``model_of(*args, **kwargs)``."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def inner(*args: Any, **kwargs: Any) -> Any:
            with module_table(model_of(*args, **kwargs)):
                return fn(*args, **kwargs)

        return inner  # type: ignore[return-value]

    return deco
