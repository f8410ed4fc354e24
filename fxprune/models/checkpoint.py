"""Safe state-dict loading with clear errors when a checkpoint does not fit a model."""

from __future__ import annotations

import os
import pickle
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

__all__ = ["CheckpointError", "extract_state_dict", "load_state_dict_checked", "read_checkpoint"]

_WRAPPER_KEYS = ("state_dict", "model", "model_state_dict", "net")
_MAX_LISTED = 8


class CheckpointError(ValueError):
    """A checkpoint file cannot be read or does not fit the model."""


def read_checkpoint(path: str | os.PathLike[str]) -> Any:
    """Load ``path`` with ``torch.load(map_location="cpu", weights_only=True)``.

    Raises ``FileNotFoundError`` for a missing file and :class:`CheckpointError` for a corrupt
    file or one that holds pickled Python objects (e.g. ``torch.save(model)``).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" in str(exc):
            raise CheckpointError(
                f"{path} holds pickled Python objects (for example a whole model saved with "
                "torch.save(model)); checkpoints are only loaded with weights_only=True. Save "
                "model.state_dict() instead and pass the model constructor spec plus that state dict."
            ) from None
        raise _corrupt(path, exc.__context__ or exc) from exc
    except Exception as exc:  # random bytes raise anything from IndexError to MemoryError
        raise _corrupt(path, exc) from exc


def _corrupt(path: str, exc: BaseException) -> CheckpointError:
    detail = str(exc).split(". ")[0] or type(exc).__name__
    return CheckpointError(
        f"cannot read checkpoint {path}: the file is corrupt or not a PyTorch file ({detail})"
    )


def _is_tensor_mapping(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and all(torch.is_tensor(v) for v in obj.values())


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """Return the state dict inside ``obj``, stripping a leading ``module.`` from every key.

    Accepts a raw state dict or a dict wrapping one under ``state_dict``, ``model``,
    ``model_state_dict`` or ``net``.
    """
    state = obj
    if not _is_tensor_mapping(state) and isinstance(state, Mapping):
        for key in _WRAPPER_KEYS:
            if key in state and _is_tensor_mapping(state[key]):
                state = state[key]
                break
    if not _is_tensor_mapping(state):
        keys = sorted(map(str, obj.keys()))[:_MAX_LISTED] if isinstance(obj, Mapping) else []
        raise CheckpointError(
            f"{source} does not contain a state dict (expected a mapping of tensors, or one wrapped under "
            f"{', '.join(repr(k) for k in _WRAPPER_KEYS)}); got {type(obj).__name__}"
            + (f" with keys {keys}" if keys else "")
        )
    return {_strip_prefix(str(k)): v for k, v in state.items()}


def _strip_prefix(key: str, prefix: str = "module.") -> str:
    return key[len(prefix) :] if key.startswith(prefix) else key


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def load_state_dict_checked(
    model: nn.Module,
    checkpoint: str | os.PathLike[str] | Mapping[str, Any],
    source: str | None = None,
) -> nn.Module:
    """Load a checkpoint (path or already-loaded object) into ``model`` strictly.

    Raises :class:`CheckpointError` naming the missing, unexpected and shape-mismatched keys when
    the state dict does not fit. BatchNorm ``num_batches_tracked`` buffers absent from older
    checkpoints are tolerated. Returns ``model``.
    """
    if isinstance(checkpoint, (str, os.PathLike)):
        source = source or os.fspath(checkpoint)
        checkpoint = read_checkpoint(checkpoint)
    source = source or "checkpoint"
    state = extract_state_dict(checkpoint, source)
    expected = model.state_dict()

    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    mismatched = [
        f"{k} (checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)})"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts))

    full = dict(state)
    for key, value in expected.items():
        full.setdefault(key, value)  # only num_batches_tracked can be absent here
    model.load_state_dict(full, strict=True)
    return model
