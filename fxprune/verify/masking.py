"""The masked original: the model with every removed channel zero, to compare the slim model against.

The masks are computed once, when they are attached: one 0/1 vector per labelled dim of every input and
output of every layer call, multiplied in by forward hooks. A layer's input that is the very tensor the
previous layer's output hook just masked with the same vectors, unchanged since (same version counter), is
not multiplied again (multiplying by a 0/1 vector twice gives the same values).
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch
from torch import nn

from ..capture.modules import named_modules, named_tensors
from ..groups.slots import Block, SlotTable

__all__ = ["MaskSet", "masked", "masked_copy", "put_back", "removed_slots"]


def removed_slots(table: SlotTable, removed: set[int]) -> np.ndarray:
    """For every slot of ``table``: whether its class (its root) is in ``removed``."""
    gone = np.zeros(len(table), dtype=bool)
    if removed:
        gone[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
    return gone[table.all_roots()]


class DimMasks(list):
    """The masks of one tensor: ``(dim, keep)`` pairs, ``keep`` a float 0/1 vector over that dim."""

    def shaped(self, value: torch.Tensor) -> list[torch.Tensor]:
        """Each ``keep`` on ``value``'s device and dtype, shaped to broadcast over it (made once per kind)."""
        cache = self.__dict__.setdefault("_shaped", {})
        key = (value.dim(), value.device, value.dtype)
        hit = cache.get(key)
        if hit is None:
            hit = cache[key] = []
            for d, keep in self:
                shape = [1] * value.dim()
                shape[d] = len(keep)
                hit.append(keep.to(value.device, value.dtype).reshape(shape))
        return hit


def tensor_masks(labels: Any, gone: np.ndarray, memo: dict | None = None) -> Any:
    """The masks for a value whose labels are ``labels`` (a dict per tensor, nested lists for sequences).

    ``memo`` (label array id -> mask) builds one mask per label array: a layer's output and the next
    layer's input share their labels, hence their mask.
    """
    memo = {} if memo is None else memo
    if isinstance(labels, dict):
        known = memo.get(("dims", id(labels)))  # the same labels (a layer's output, the next one's input)
        if known is not None and known[0] is labels:
            return known[1]
        out = DimMasks()
        for d, lab in labels.items():
            hit = memo.get(id(lab))
            if hit is None or hit[0] is not lab:
                keep = ~gone[np.asarray(lab, dtype=np.int64)]
                mask = None if keep.all() else torch.as_tensor(keep, dtype=torch.float32)
                hit = memo[id(lab)] = (lab, mask)
            if hit[1] is not None:
                out.append((d, hit[1]))
        memo[("dims", id(labels))] = (labels, out)
        return out
    if isinstance(labels, (list, tuple)):
        return [tensor_masks(lab, gone, memo) for lab in labels]
    return None


def _has_mask(masks: Any) -> bool:
    if isinstance(masks, DimMasks):
        return len(masks) > 0
    return isinstance(masks, list) and any(_has_mask(m) for m in masks)


def apply_masks(value: Any, masks: Any, applied: MaskedTensors | None = None) -> Any:
    """``value`` with its removed channels multiplied by zero (results noted in ``applied``)."""
    if isinstance(value, torch.Tensor) and isinstance(masks, DimMasks):
        if applied is not None and applied.done(value, masks):
            return value
        for keep in masks.shaped(value):
            value = value * keep
        if applied is not None and masks:
            applied.note(value, masks)
        return value
    if isinstance(value, (list, tuple)) and isinstance(masks, list) and len(masks) == len(value):
        out = [apply_masks(v, m, applied) for v, m in zip(value, masks)]
        return type(value)(out) if not hasattr(value, "_fields") else type(value)(*out)
    return value


class MaskedTensors:
    """The tensors masked during one forward pass: which masks each got, at which version counter."""

    def __init__(self) -> None:
        self.seen: dict[int, tuple[weakref.ref, DimMasks, int]] = {}

    def note(self, value: torch.Tensor, masks: DimMasks) -> None:
        self.seen[id(value)] = (weakref.ref(value), masks, value._version)

    def done(self, value: torch.Tensor, masks: DimMasks) -> bool:
        """Whether ``value`` already had every mask of ``masks`` applied and has not changed since."""
        hit = self.seen.get(id(value))
        if hit is None or hit[0]() is not value or hit[2] != value._version:
            return False
        if hit[1] is masks:
            return True
        return all(any(d == d2 and k is k2 for d2, k2 in hit[1]) for d, k in masks)


class _HookedChannels:
    """Per layer call, the channel classes of the inputs and outputs its hooks mask (as byte strings of
    their roots, so that a parameter block's channels are looked up instead of compared array by array)."""

    def __init__(self, module_io: dict[str, list[tuple[Any, Any]]], roots: np.ndarray) -> None:
        self.module_io, self.roots = module_io, roots
        self.calls: dict[str, list[set[bytes]]] = {}
        self._keys: dict[int, tuple[Any, bytes]] = {}  # label array id -> (the array, its roots' bytes)

    def covers(self, module: str, block_roots: np.ndarray) -> bool:
        """Whether a layer's parameter channels are exactly the channels of one of its inputs or outputs,
        in every call. Then the hooks already zero those channels (a conv's output rows, a BN's channels)
        and zeroing the parameter rows as well changes nothing."""
        calls = self.calls.get(module)
        if calls is None:
            calls = self.calls[module] = [
                {self._key(lab) for lab in _labels(_hooked(i, o))} for i, o in self.module_io.get(module, ())
            ]
        key = block_roots.tobytes()  # C order whatever its strides
        return len(calls) > 0 and all(key in c for c in calls)


    def _key(self, lab: Any) -> bytes:
        """The roots of a label array as bytes (a layer's output labels are the next one's input labels)."""
        hit = self._keys.get(id(lab))
        if hit is None or hit[0] is not lab:
            hit = self._keys[id(lab)] = (lab, self.roots[np.asarray(lab, dtype=np.int64)].tobytes())
        return hit[1]


def _labels(labels: Any) -> Iterator[Any]:
    """Every label array of a nested labels structure, as it is held."""
    if isinstance(labels, dict):
        yield from labels.values()
    elif isinstance(labels, (list, tuple)):
        for lab in labels:
            yield from _labels(lab)


def _hooked(in_labels: Any, out_labels: Any) -> list:
    return [in_labels, out_labels] if isinstance(in_labels, (list, tuple)) else [out_labels]


class MaskSet:
    """Every mask of one removal: per layer call (inputs, outputs), and the zeroed rows of ``blocks``."""

    def __init__(
        self,
        module_io: dict[str, list[tuple[Any, Any]]],
        table: SlotTable,
        removed: set[int],
        blocks: list[Block] = (),
        graph: torch.fx.Graph | None = None,
    ) -> None:
        gone = removed_slots(table, removed)
        memo: dict = {}
        self.calls: dict[str, list[tuple[Any, Any]]] = {}
        self.channelwise_next: dict[str, str] = {}  # layer -> the batch norm that is its only use
        for name, calls in module_io.items():
            masks = [
                (tensor_masks(i, gone, memo) if isinstance(i, (list, tuple)) else None,
                 tensor_masks(o, gone, memo))
                for i, o in calls
            ]
            masks = [(i if _has_mask(i) else None, o if _has_mask(o) else None) for i, o in masks]
            if any(i is not None or o is not None for i, o in masks):
                self.calls[name] = masks
        if graph is not None:
            self._skip_masks_before_channelwise(graph)
        roots = table.all_roots()
        hooked = _HookedChannels(module_io, roots)
        self.block_rows: list[tuple[Block, torch.Tensor]] = []
        gone_before = np.concatenate(([0], np.cumsum(gone)))  # removed slots below each slot
        for b in blocks:
            if gone_before[b.base + b.size] == gone_before[b.base]:
                continue  # nothing removed in this block
            if not hooked.covers(b.module, roots[b.base : b.base + b.size]):
                rows = np.nonzero(gone[b.base : b.base + b.size])[0]
                self.block_rows.append((b, torch.as_tensor(rows, dtype=torch.int64)))

    def _skip_masks_before_channelwise(self, graph: torch.fx.Graph) -> None:
        """Leave out the output masks of a layer whose only use is a batch norm that masks its own output the
        same way (and that batch norm's input masks): a batch norm's channel depends on that channel of its
        input alone, so the masked channels of its input change nothing it outputs after its own masks.
        ``graph`` is the symbolic trace the labels came from (one node per layer call)."""
        for node in graph.nodes:
            if node.op != "call_module" or len(node.users) != 1:
                continue
            user = next(iter(node.users))
            first = self.calls.get(node.target)
            then = self.calls.get(user.target)
            if (
                user.op != "call_module" or user.args != (node,) or user.kwargs
                or first is None or then is None or len(first) != 1 or len(then) != 1
            ):
                continue
            out_masks, (bn_in, bn_out) = first[0][1], then[0]
            if _same_masks(out_masks, bn_out) and bn_in is not None and _same_masks(bn_in[0], out_masks):
                self.channelwise_next[node.target] = user.target

    def attach(self, model: nn.Module, folded: Collection[str] = ()) -> list[Any]:
        """Hook the masks into ``model``'s layers; the hook handles. The output masks of the ``folded`` layers
        (see :meth:`fold_norms`) are noted on their outputs, not multiplied in."""
        handles = []
        applied = MaskedTensors()
        modules = named_modules(model)
        skip_out, skip_in = set(), set()
        for layer, norm in self.channelwise_next.items():
            m = modules.get(norm)
            if type(m) in _PER_CHANNEL and not m.training and layer in modules:
                skip_out.add(layer)
                skip_in.add(norm)
        for name, masks in self.calls.items():
            m = modules.get(name)
            if m is None:
                continue
            if name in skip_out or name in skip_in:
                masks = [(None if name in skip_in else i, None if name in skip_out else o) for i, o in masks]
                if all(i is None and o is None for i, o in masks):
                    continue
            hooks = _CallMask(masks, applied, name in folded)
            if any(i is not None for i, _ in masks):
                handles.append(m.register_forward_pre_hook(hooks.pre))
            if len(masks) > 1 or any(o is not None for _, o in masks):  # the post hook counts the calls
                handles.append(m.register_forward_hook(hooks.post))
        return handles

    def fold_norms(self, model: nn.Module) -> tuple[set[str], list[tuple]]:
        """Zero the weight and bias rows of the removed output channels of batch norms (eval mode, affine,
        exact types, one call, masks on the channel dim only): their outputs are then exactly zero there,
        as the output mask would make them. The folded layers, and what was there, to put back."""
        modules = named_modules(model)
        folded, saved = set(), []
        with torch.no_grad():
            for name, calls in self.calls.items():
                m = modules.get(name)
                out = calls[0][1] if len(calls) == 1 else None
                if (
                    type(m) not in _PER_CHANNEL or m.training or m.weight is None or m.bias is None
                    or not isinstance(out, DimMasks) or not out or any(d != 1 for d, _ in out)
                    or any(keep.shape[0] != m.num_features for _, keep in out)
                ):
                    continue
                zero = out[0][1] == 0
                for _, keep in out[1:]:
                    zero = zero | (keep == 0)
                idx = zero.nonzero().flatten().to(m.weight.device)
                for p in (m.weight, m.bias):
                    saved.append((p, 0, idx, p.index_select(0, idx)))
                    p.index_fill_(0, idx, 0.0)
                folded.add(name)
        return folded, saved

    def zero_blocks(self, model: nn.Module) -> list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]:
        """Zero the removed rows of the blocks' parameters; what was there, to put back."""
        params = dict(named_tensors(model, buffers=False))
        saved = []
        with torch.no_grad():
            for b, rows in self.block_rows:
                for name, dim in b.members:
                    if name in params:
                        p = params[name]
                        idx = rows.to(p.device)
                        saved.append((p, dim, idx, p.index_select(dim, idx)))
                        p.index_fill_(dim, idx, 0.0)
        return saved


@contextmanager
def masked(
    model: nn.Module,
    module_io: dict[str, list[tuple[Any, Any]]],
    table: SlotTable,
    removed: set[int],
    blocks: list[Block] = (),
    graph: torch.fx.Graph | None = None,
) -> Iterator[nn.Module]:
    """``model`` itself with the removed channels zero, for the duration of the ``with`` block.

    Hooks are removed and zeroed parameter rows restored on exit, so no copy of the model is made.
    ``graph``: the symbolic trace the labels came from, if any; then a layer whose only use is a batch norm
    masked the same way is not masked itself (what the model outputs is the same).
    """
    masks = MaskSet(module_io, table, removed, blocks, graph)
    saved = masks.zero_blocks(model)
    handles = []
    try:
        folded, rows = masks.fold_norms(model)
        saved += rows
        handles = masks.attach(model, folded)
        yield model
    finally:
        for h in handles:
            h.remove()
        put_back(saved)


def put_back(saved: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]]) -> None:
    """Undo :meth:`MaskSet.zero_blocks` and :meth:`MaskSet.fold_norms`, last change first."""
    with torch.no_grad():
        for p, dim, idx, rows in reversed(saved):
            p.index_copy_(dim, idx, rows)


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
    copied = copy.deepcopy(model)
    masks = MaskSet(module_io, table, removed, blocks)
    masks.zero_blocks(copied)
    masks.attach(copied)
    return copied


class _CallMask:
    """Masks for a module called several times per forward (a shared ReLU): one entry per call, cycling.

    An entry is ``(input masks, output masks)``, None where nothing is masked.
    """

    def __init__(
        self, masks: list[tuple[Any, Any]], applied: MaskedTensors | None = None, folded: bool = False
    ) -> None:
        self.masks, self.i, self.applied, self.folded = masks, 0, applied, folded

    def pre(self, mod: nn.Module, args: tuple) -> tuple | None:
        in_masks = self.masks[self.i % len(self.masks)][0]
        if in_masks is None:
            return None
        return tuple(
            apply_masks(a, m, self.applied) if isinstance(a, torch.Tensor) else a
            for a, m in zip(args, list(in_masks) + [None] * (len(args) - len(in_masks)))
        )

    def post(self, mod: nn.Module, args: tuple, out: Any) -> Any:
        in_masks, out_masks = self.masks[self.i % len(self.masks)]
        self.i += 1
        if out_masks is None:
            return None
        if self.applied is not None and (
            self.folded or _zero_where_input_zero(mod, args, in_masks, out, out_masks)
        ):
            self.applied.note(out, out_masks)  # zero rows of the layer, or zeros in: so is the output
            return None
        return apply_masks(out, out_masks, self.applied)


# Layers whose output channel depends on that channel of their input alone (in eval mode).
_PER_CHANNEL = {nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d}


def _same_masks(a: Any, b: Any) -> bool:
    """Whether ``a`` and ``b`` are the same masks on the same dims (the very same keep vectors)."""
    if not isinstance(a, DimMasks) or not isinstance(b, DimMasks) or len(a) != len(b) or not a:
        return False
    return all(d == d2 and k is k2 for (d, k), (d2, k2) in zip(a, b))


# Elementwise activations with f(0) == 0 exactly: where their input is zero, so is their output.
_ZERO_AT_ZERO = {nn.ReLU, nn.ReLU6, nn.SiLU, nn.Hardswish, nn.GELU, nn.Tanh, nn.LeakyReLU, nn.Mish, nn.ELU}


def _zero_where_input_zero(mod: nn.Module, args: tuple, in_masks: Any, out: Any, out_masks: Any) -> bool:
    """Whether ``mod`` (exactly one of the activations above) maps its masked input to an output that
    already has ``out_masks``' zeros: the same masks on the same dims of a tensor of the same shape."""
    if type(mod) not in _ZERO_AT_ZERO or len(args) != 1 or not in_masks or not isinstance(out, torch.Tensor):
        return False
    first = in_masks[0]
    if not isinstance(first, DimMasks) or not isinstance(out_masks, DimMasks) or out.shape != args[0].shape:
        return False
    same = all(d == d2 and k is k2 for (d, k), (d2, k2) in zip(first, out_masks))
    return same and len(first) == len(out_masks)
