"""Remove planned channels by slicing the user's own parameters and buffers in place."""

from __future__ import annotations

from collections.abc import Collection, Mapping

import numpy as np
import torch
from torch import nn

from ..capture.modules import named_modules, named_tensors
from ..groups.channel_constants import ChannelConstant
from ..groups.grouping import Group
from ..plan.planner import Plan
from ..threads import one_thread
from .adapters import fix_attributes, snapshot, write_constant
from .scale_folds import fold_scales

__all__ = ["slim_model"]


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    names: dict[int, list[str]] = {}
    for n, t in named_tensors(model):
        names.setdefault(id(t), []).append(n)
    return names


def _set_tensor(owner: nn.Module, attr: str, old: torch.Tensor, new: torch.Tensor) -> None:
    if isinstance(old, nn.Parameter):
        setattr(owner, attr, new)
    elif attr in owner._buffers:
        owner._buffers[attr] = new
    else:
        setattr(owner, attr, new)


def _memory_format(t: torch.Tensor) -> torch.memory_format:
    """The layout ``t`` is in: channels-last for 4-D/5-D tensors stored that way, else contiguous."""
    if t.dim() == 4 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    if t.dim() == 5 and not t.is_contiguous() and t.is_contiguous(memory_format=torch.channels_last_3d):
        return torch.channels_last_3d
    return torch.contiguous_format


def slim_model(
    model: nn.Module,
    groups: list[Group],
    plan: Plan,
    constants: list[ChannelConstant] = (),
    orders: Mapping[tuple[str, int], np.ndarray] | None = None,
    cut: Collection[int] | None = None,
) -> dict[str, tuple[int, int]]:
    """Slice every parameter dimension of the planned atoms out of ``model`` (in place).

    Returns ``{"module.param[dim]": (before, after)}``. The model keeps its class and module tree;
    parameters are replaced by new ``nn.Parameter`` objects (re-create optimizers afterwards) on the same
    device, with the same dtype and memory format (channels-last stays channels-last); a parameter
    shared between modules stays one object. ``orders`` gives, for a ``(parameter, dim)``, its kept
    indices in the order its input arrives (after a channel shuffle:
    :func:`fxprune.groups.channel_order.channel_orders`); the others keep ascending order.
    ``cut`` (group ids) slims in two steps: only those groups' tensors are cut, the others' having been
    cut by an earlier call with their part of ``plan``; channel constants count the whole ``plan``.
    """
    with one_thread(), torch.no_grad():
        return _slim(model, groups, plan, constants, orders or {}, cut)


def _removed_mask(removed: np.ndarray, width: int) -> np.ndarray | None:
    """``width + 1`` flags, True at the removed atoms (the extra last entry answers index -1: kept); None
    when ``removed`` is empty or holds an index outside ``0..width-1``."""
    if len(removed) == 0 or removed.min() < 0 or removed.max() >= width:
        return None
    gone = np.zeros(width + 1, dtype=bool)
    gone[removed] = True
    return gone


def _kept_positions(
    idx: np.ndarray, removed: np.ndarray, width: int, gone: np.ndarray | None = None
) -> np.ndarray:
    """The positions of ``idx`` (atom indices, -1 for none) whose atom is not in ``removed``.

    ``gone``: :func:`_removed_mask` of ``removed``, when the caller has it already (one per group).
    """
    removed = np.asarray(removed, dtype=np.int64)
    if len(removed) == 0:
        return np.arange(len(idx))
    if gone is None:
        gone = _removed_mask(removed, width)
    if gone is None or len(idx) == 0 or idx.min() < -1 or idx.max() >= width:
        return np.nonzero(~np.isin(idx, removed))[0]
    return np.nonzero(~gone[idx])[0]


def _slim(
    model: nn.Module,
    groups: list[Group],
    plan: Plan,
    constants: list[ChannelConstant],
    orders: Mapping,
    cut: Collection[int] | None,
) -> dict[str, tuple[int, int]]:
    fold_scales(model, groups, plan, constants, cut)  # sdpa's default scale: before rows move
    aliases = _aliases(model)
    canonical = {alias: names[0] for names in aliases.values() for alias in names}
    tensors = dict(named_tensors(model))
    modules = named_modules(model)
    done: set[tuple[str, int]] = set()
    cuts: dict[str, list[tuple[int, torch.Tensor]]] = {}  # tensor name -> its cuts (dim, kept index)
    changes: dict[str, tuple[int, int]] = {}
    for g in groups:
        removed = plan.remove.get(g.id)
        if removed is None or len(removed) == 0 or (cut is not None and g.id not in cut):
            continue
        removed = np.asarray(removed, dtype=np.int64)
        gone = _removed_mask(removed, g.width)
        for b in g.blocks:
            keep = _kept_positions(g.block_atom_index[b.base], removed, g.width, gone)
            if len(keep) == b.size:
                continue
            keep_t = torch.as_tensor(keep, dtype=torch.long)
            for name, dim in b.members:
                key = (canonical.get(name, name), dim)  # a tied tensor is cut once
                if key in done or name not in tensors:
                    continue
                done.add(key)
                index = torch.as_tensor(orders[(name, dim)]) if (name, dim) in orders else keep_t
                cuts.setdefault(name, []).append((dim, index))
                changes[f"{name}[{dim}]"] = (tensors[name].shape[dim], index.shape[0])
    touched: dict[str, dict] = {}
    for name, dims in cuts.items():  # every cut of a tensor, then one new tensor in its place
        old = data = tensors[name]
        for dim, index in dims:
            sliced = data.detach().index_select(dim, index.to(data.device))
            data = sliced.contiguous(memory_format=_memory_format(data))
        new = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
        for alias in aliases.get(id(old), [name]):
            owner, _, attr = alias.rpartition(".")
            if owner not in touched:
                touched[owner] = snapshot(modules[owner])
            _set_tensor(modules[owner], attr, old, new)
            tensors[alias] = new
        aliases[id(new)] = aliases.pop(id(old), [name])
    for owner, before in touched.items():
        fix_attributes(modules[owner], before)
    written = [c for c in constants if c.attr]  # a scale fold (applied above) is not an attribute
    removed_roots = (
        {int(r) for g in groups for r in g.atoms[plan.remove.get(g.id, [])].tolist()} if written else set()
    )
    for c in written:
        kept = int(sum(1 for r in c.roots.tolist() if r not in removed_roots))
        write_constant(model, c.module, c.attr, kept)
    return changes
