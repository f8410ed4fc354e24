"""The standard baselines: L1/L2 magnitude (one shot), BN scale (network slimming) and Taylor."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from .method import ALL_ROLES, Method, register_method

__all__ = ["BNScale", "L1", "L2", "Taylor"]


@register_method("l1")
class L1(Method):
    """Li et al. 2017: at ``prune()``, remove the channels of smallest filter L1 norm (then fine-tune)."""

    picks_at_start = False


@register_method("l2")
class L2(L1):
    """As ``l1`` with the L2 norm."""

    def selection_scores(self) -> dict[int, np.ndarray]:
        return {c.id: c.norm_scores(self.model, 2) for c in self.channels}


class _Counted(Method):
    """A method that works for a fixed number of iterations (``Options.iterations``)."""

    picks_at_start = False

    @property
    def done(self) -> bool:
        return self.t >= self.options.iterations


@register_method("bn_scale")
class BNScale(_Counted):
    """Network slimming (Liu et al. 2017): an L1 penalty on BN gamma while training, score ``|gamma|``.

    Only groups containing a norm layer are pruned (the others are left whole).
    """

    roles = {"group": frozenset({"norm"}), "restricted": frozenset({"norm"})}

    @dataclasses.dataclass
    class Options:
        sparsity: float = 1e-4  # s: the L1 coefficient on gamma
        iterations: int = 0  # training iterations with the penalty before ``done`` (0: done at once)

    def _gammas(self, ch):
        return [s for s in ch.slices if s.param.endswith("weight")]

    def after_backward(self, scale: float = 1.0) -> None:
        with torch.no_grad():
            for ch in self.channels:
                for s in self._gammas(ch):
                    t = s.tensor(self.model)
                    if t.grad is None:
                        t.grad = torch.zeros_like(t)
                    t.grad.add_(torch.sign(t.detach()), alpha=self.options.sparsity * scale)

    def selection_scores(self) -> dict[int, np.ndarray]:
        out = {}
        for ch in self.channels:
            gammas = self._gammas(ch)
            score = torch.zeros(ch.width, dtype=torch.float64)
            count = torch.zeros(ch.width, dtype=torch.float64)
            for s in gammas:
                sums, n = s.to_atoms(s.tensor(self.model).abs(), ch.width)
                score += sums
                count += n
            out[ch.id] = (score / count.clamp(min=1)).numpy()
        return out


@register_method("taylor")
class Taylor(_Counted):
    """Molchanov et al. 2019: ``|sum over the group's slices of weight * grad|``, summed over batches."""

    roles = {"group": ALL_ROLES, "restricted": frozenset({"out"})}

    @dataclasses.dataclass
    class Options:
        iterations: int = 100  # batches whose gradients are accumulated before ``done``

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        self.scores = [torch.zeros(c.width, dtype=torch.float64) for c in channels]

    def after_backward(self, scale: float = 1.0) -> None:
        with torch.no_grad():
            for ch, acc in zip(self.channels, self.scores):
                batch = torch.zeros(ch.width, dtype=torch.float64)
                for s in ch.slices:
                    t = s.tensor(self.model)
                    if t.grad is not None:
                        batch += s.to_atoms(s.rows(t.detach() * t.grad).sum(1).double() / scale, ch.width)[0]
                acc.add_(batch.abs())

    def selection_scores(self) -> dict[int, np.ndarray]:
        if not any(bool(s.any()) for s in self.scores):
            raise RuntimeError(
                "taylor: no gradients were accumulated; call after_backward() in the training loop"
            )
        return {c.id: s.numpy().copy() for c, s in zip(self.channels, self.scores)}

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "scores": [s.clone() for s in self.scores]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.scores = [s.clone() for s in state["scores"]]
