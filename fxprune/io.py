"""Save a pruned model's weights and load them back into a freshly constructed (dense) model."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from .models.checkpoint import CheckpointError, read_checkpoint
from .slim.adapters import fix_attributes, snapshot

__all__ = ["FORMAT", "load", "save"]

FORMAT = "fxprune/1"
_MAX_LISTED = 10
ModelSource = nn.Module | Callable[[], nn.Module] | str


def _tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by qualified name, shared tensors under each of their names."""
    out: dict[str, torch.Tensor] = dict(model.named_parameters(remove_duplicate=False))
    out.update(dict(model.named_buffers(remove_duplicate=False)))
    return out


def _int_attributes(model: nn.Module) -> dict[str, dict[str, Any]]:
    """Every module's int and int-sequence attributes (channel counts slimming may have written: ``groups``,
    split sizes, head counts), by module name."""
    out: dict[str, dict[str, Any]] = {}
    for name, m in model.named_modules():
        found = {
            k: v if type(v) is int else list(v)
            for k, v in vars(m).items()
            if not k.startswith("_")
            and (type(v) is int or (isinstance(v, (list, tuple)) and v and all(type(e) is int for e in v)))
        }
        if found:
            out[name] = found
    return out


def _restore_attributes(model: nn.Module, saved: Mapping[str, Mapping[str, Any]]) -> None:
    """Set the saved int attributes that differ (a sequence keeps the type the module gave it)."""
    for name, attrs in saved.items():
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        for k, v in attrs.items():
            have = getattr(m, k, None)
            if isinstance(have, (list, tuple)) and isinstance(v, list):
                v = type(have)(v) if isinstance(have, tuple) else list(v)
            if (type(have) is int and type(v) is int) or isinstance(have, (list, tuple)):
                if have != v:
                    setattr(m, k, v)


def save(model: nn.Module, path: str | os.PathLike[str], *, spec: str | None = None) -> None:
    """Save ``model``'s weights and every tensor's shape so that :func:`load` can rebuild the slim model.

    ``spec`` (optional) records how to construct the dense model, e.g. ``"torchvision:resnet18"``.
    The file holds only tensors, strings and lists, so it loads with ``torch.load(weights_only=True)``.
    """
    state = model.state_dict()
    tensors = _tensors(model)
    extra = {k: v.detach() for k, v in model.named_buffers(remove_duplicate=False) if k not in state}
    torch.save(
        {
            "format": FORMAT,
            "state_dict": state,
            "shapes": {name: list(t.shape) for name, t in tensors.items()},
            "spec": spec,
            "buffers": extra,  # non-persistent buffers (not in the state dict) that slimming may have sliced
            "attributes": _int_attributes(model),  # channel counts in Python attributes (groups, split sizes)
        },
        os.fspath(path),
    )


def _listing(items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    return shown + (f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else "")


def _read(path: str | os.PathLike[str]) -> dict[str, Any]:
    path = os.fspath(path)
    try:
        obj = read_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"{path} is not a readable fxprune checkpoint: {exc}") from None
    if not isinstance(obj, Mapping) or obj.get("format") != FORMAT:
        tagged = isinstance(obj, Mapping) and "format" in obj
        got = f"format {obj['format']!r}" if tagged else "no format tag"
        raise ValueError(
            f"{path} is not an fxprune file ({got}; expected {FORMAT!r}); write it with "
            "fxprune.save(model, path). "
            "A plain state dict of an unpruned model loads with model.load_state_dict(torch.load(path))."
        )
    state, shapes = obj.get("state_dict"), obj.get("shapes")
    if not isinstance(state, Mapping) or not isinstance(shapes, Mapping):
        raise ValueError(f"{path} is a damaged fxprune file: 'state_dict' or 'shapes' is missing")
    return dict(obj)


def _build(model_or_factory: ModelSource) -> nn.Module:
    if isinstance(model_or_factory, nn.Module):
        return model_or_factory
    if isinstance(model_or_factory, str):
        from .models.spec import load_model

        return load_model(model_or_factory)[0]
    if callable(model_or_factory):
        model = model_or_factory()
        if not isinstance(model, nn.Module):
            raise ValueError(f"the model factory returned {type(model).__name__}, expected a torch.nn.Module")
        return model
    raise ValueError(
        f"expected an nn.Module, a factory returning one or a model spec string, got {type(model_or_factory)}"
    )


def _shape_problem(name: str, module: nn.Module, saved: tuple[int, ...], have: tuple[int, ...]) -> str | None:
    """Why pruning cannot have turned a tensor of shape ``have`` into ``saved`` (None when it can)."""
    if len(saved) != len(have):
        return f"{name}: saved {saved} has {len(saved)} dims, the model's {have} has {len(have)}"
    grown = [d for d, (s, h) in enumerate(zip(saved, have)) if s > h]
    if grown:
        return f"{name}: saved {saved} is larger than the model's {have} in dim {grown[0]}"
    if isinstance(module, nn.modules.conv._ConvNd) and name.endswith(".weight") and saved[2:] != have[2:]:
        return f"{name}: kernel size {saved[2:]} differs from the model's {have[2:]}"
    return None


def _check_keys(path: str, model: nn.Module, state: Mapping[str, Any]) -> None:
    expected = model.state_dict().keys()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_listing(unexpected)}")
        raise ValueError(
            f"{path} does not fit {type(model).__name__} (was it saved from another architecture?): "
            + "; ".join(parts)
        )


def _reshape(model: nn.Module, shapes: Mapping[str, Any], path: str) -> None:
    """Replace each tensor whose saved shape differs by an empty one of that shape; fix layer attributes."""
    tensors = _tensors(model)
    aliases: dict[int, list[str]] = {}
    for name, t in tensors.items():
        aliases.setdefault(id(t), []).append(name)
    todo: dict[int, tuple[int, ...]] = {}
    problems = []
    for name, t in tensors.items():
        if name not in shapes:
            continue
        saved = tuple(int(d) for d in shapes[name])
        if saved == tuple(t.shape):
            continue
        owner = model.get_submodule(name.rpartition(".")[0])
        problem = _shape_problem(name, owner, saved, tuple(t.shape))
        if problem:
            problems.append(problem)
        elif todo.setdefault(id(t), saved) != saved:
            problems.append(f"{name}: a shared tensor is saved with two different shapes")
    if problems:
        raise ValueError(
            f"{path} does not fit {type(model).__name__}: shapes that pruning cannot explain: "
            + _listing(problems)
        )
    before: dict[str, dict] = {}
    for tid, shape in todo.items():
        names = aliases[tid]
        old = tensors[names[0]]
        data = torch.empty(shape, dtype=old.dtype, device=old.device)
        new = nn.Parameter(data, requires_grad=old.requires_grad) if isinstance(old, nn.Parameter) else data
        for name in names:
            owner_name, _, attr = name.rpartition(".")
            owner = model.get_submodule(owner_name)
            if owner_name not in before:
                before[owner_name] = snapshot(owner)
            if attr in owner._parameters:
                owner._parameters[attr] = new
            else:
                owner._buffers[attr] = new
    for owner_name, snap in before.items():
        fix_attributes(model.get_submodule(owner_name), snap)


def load(model_or_factory: ModelSource, path: str | os.PathLike[str]) -> nn.Module:
    """Load a file written by :func:`save` into a model built by ``model_or_factory``; return the model.

    ``model_or_factory`` is a dense model (changed in place), a callable returning one, or a model spec
    string (see :func:`fxprune.models.load_model`). Tensors whose saved shape differs are resized and layer
    attributes (in/out channels, groups, ...) updated before a strict ``load_state_dict``; int attributes
    saved with the file (channel counts slimming wrote: ``groups``, split sizes, head counts) are set again.
    Raises ``ValueError`` when the file is not an fxprune file, is corrupt, or does not fit the model.
    """
    path = os.fspath(path)
    obj = _read(path)
    model = _build(model_or_factory)
    state = obj["state_dict"]
    _check_keys(path, model, state)
    _reshape(model, obj["shapes"], path)
    _restore_attributes(model, obj.get("attributes") or {})
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:  # tensors disagreeing with the recorded shapes
        first = str(exc).strip().splitlines()[-1].strip()
        raise ValueError(
            f"{path} is a damaged fxprune file: its tensors do not match its recorded shapes ({first})"
        ) from None
    extra = obj.get("buffers") or {}
    if extra:
        current = dict(model.named_buffers(remove_duplicate=False))
        with torch.no_grad():
            for name, value in extra.items():
                if name in current and current[name].shape == value.shape:
                    current[name].copy_(value)
    return model
