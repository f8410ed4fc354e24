"""What every regularize-then-prune method provides, and a registry to find methods by name."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from .channels import GroupChannels

__all__ = ["Method", "get_method", "method_names", "register_method"]

log = logging.getLogger("fxprune.regularize")

ALL_ROLES = frozenset({"out", "norm", "in", "other"})


class Method:
    """A pruning method driven from a training loop.

    The :class:`~fxprune.Pruner` calls ``penalty()`` (a loss term), ``after_backward(scale)`` (gradient
    terms; ``scale`` is the AMP loss scale the gradients carry), ``step()`` after the optimizer step, reads
    ``done``, and asks for ``selection_scores()`` whenever it must choose the channels to prune (at the
    start when ``picks_at_start``, when ``wants_plan`` turns true, and at ``prune()`` if none were chosen).
    ``Options`` is a dataclass of the method's schedule constants (paper defaults).
    """

    name: ClassVar[str] = ""
    picks_at_start: ClassVar[bool] = True
    roles: ClassVar[dict[str, frozenset[str]]] = {"group": ALL_ROLES, "restricted": frozenset({"out"})}

    @dataclasses.dataclass
    class Options:
        pass

    def __init__(self, model: nn.Module, channels: list[GroupChannels], options: Any) -> None:
        self.model = model
        self.channels = channels
        self.options = options
        self.t = 0
        self.wants_plan = False

    # -- training-loop hooks -------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        return torch.zeros(())

    def after_backward(self, scale: float = 1.0) -> None:
        """Add the method's gradient terms (gradients still multiplied by ``scale``)."""

    def step(self) -> None:
        self.t += 1

    def start(self, ratio_of: Callable[[str], float]) -> None:
        """Called once by the Pruner before training; ``ratio_of(module)`` is the ratio its ``ratio`` and
        ``ratios`` give a module (for methods that sparsify weights rather than channels)."""

    def observe_loss(self, value: float) -> None:
        """The task loss of the last iteration, when the loop passes it to ``Pruner.step(loss=...)``."""

    def hard_prune(self) -> Any:
        """Called first by ``Pruner.prune()``: a report when the method prunes by itself (weight sparsity,
        no shape change), or ``None`` to remove the chosen channels."""
        return None

    @property
    def done(self) -> bool:
        return True

    @property
    def phase(self) -> str:
        return "done" if self.done else "regularizing"

    # -- channel choice ------------------------------------------------------------------------------
    def selection_scores(self) -> dict[int, np.ndarray]:
        """Importance per atom of every regularized group (lowest are pruned): L1 of the filters."""
        return {c.id: c.norm_scores(self.model, 1) for c in self.channels}

    def chosen(self) -> None:
        """Called once the channels to prune (``GroupChannels.pruned``) have been (re)chosen."""
        self.wants_plan = False

    def removal_counts(self) -> dict[int, int] | None:
        """Atoms to remove per group id when the method sets each group's width itself (``None``: the
        Pruner's ``ratio`` or ``target_flops`` decides)."""
        return None

    def calibrate(self, batches: Iterable[Any]) -> None:
        """Gather statistics from calibration batches before choosing (methods choosing from data)."""
        raise ValueError(f"method {self.name!r} does not use calibration data")

    def close(self) -> None:
        """Release what the method installed on the model (hooks); the Pruner calls it before slimming."""

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {"t": self.t}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.t = int(state["t"])

    @property
    def active(self) -> list[GroupChannels]:
        """Groups with channels to prune."""
        return [c for c in self.channels if bool(c.pruned.any())]


_METHODS: dict[str, type[Method]] = {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    """Register a :class:`Method` subclass under ``name`` (``method="greg1"``)."""

    def deco(cls: type[Method]) -> type[Method]:
        cls.name = name
        _METHODS[name] = cls
        return cls

    return deco


def method_names() -> list[str]:
    return sorted(_METHODS)


def get_method(name: str) -> type[Method]:
    if name not in _METHODS:
        raise ValueError(f"unknown pruning method {name!r}; known: {', '.join(method_names())}")
    return _METHODS[name]


def make_options(cls: type[Method], options: dict[str, Any]) -> Any:
    """The method's ``Options`` from keyword arguments, refusing unknown names and bad values."""
    fields = {f.name for f in dataclasses.fields(cls.Options)}
    unknown = sorted(set(options) - fields)
    if unknown:
        known = ", ".join(sorted(fields)) or "none"
        raise TypeError(
            f"method {cls.name!r} has no option {', '.join(map(repr, unknown))}; its options: {known}"
        )
    opts = cls.Options(**options)
    for f in dataclasses.fields(opts):
        value = getattr(opts, f.name)
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and value < 0 and not f.metadata.get("signed"):
            raise ValueError(f"{cls.name} option {f.name} must not be negative, got {value}")
    return opts
