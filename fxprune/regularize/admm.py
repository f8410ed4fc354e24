"""ADMM pruning, and the augmented-Lagrangian loop it shares with SLR (Gurevin et al., IJCAI 2021).

The sparsity constraint ``W in S`` is split as ``W = Z, Z in S`` with the augmented Lagrangian::

    L(W, Z, Lambda) = f(W) + <Lambda, W - Z> + rho/2 ||W - Z||^2

* W-step, every training step: minimize ``f(W) + rho/2 ||W - Z + Lambda/rho||^2`` over W, either through
  ``penalty()`` added to the loss or through ``after_backward()`` adding its gradient (not both: when
  ``penalty()`` was called, ``after_backward()`` adds nothing).
* Every ``update_every`` iterations (the paper: once per epoch, from the second epoch on): the Z-step
  ``Z = Proj_S(W + Lambda/rho)`` and a multiplier step. ADMM's is fixed, ``U <- U + W - Z`` with the
  scaled multiplier ``U = Lambda/rho``; SLR (:mod:`fxprune.regularize.slr`) checks a condition first.
* ``done`` after ``rounds * update_every`` iterations (the paper's 100 epochs); ``prune()`` is the hard
  prune ``W = Proj_S(W)``.

``update_every`` defaults to 391, one CIFAR-10 epoch at batch 128 (the Pruner does not know the epoch
length: set it to ``len(loader)``).

``S`` is structured by default: in every regularized group, the channels the Pruner's plan keeps (ratio,
per-module ratios, ``target_flops``, ``round_to``, scope) when ranked by their joint L2 norm over all of
the group's slices, BN gamma and beta included; the others are zero. Coupled layers thus keep identical
indices, and ``prune()`` removes the channels that ``Proj_S(W)`` zeroes. With ``unstructured=True``, ``S``
holds the weights of the scope's conv and linear layers with a fraction ``ratio`` (per layer, ``ratios``
by module name; a layer at ratio 0 stays dense) of zeros: the projection keeps the largest magnitudes, and
``prune()`` zeroes weights in
place and returns a :class:`WeightSparsity` (no shape changes, so no dense speed-up).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .channels import GroupChannels
from .method import ALL_ROLES, Method, log, register_method

__all__ = ["ADMM", "AugmentedLagrangian", "WeightSparsity", "joint_norms", "keep_largest"]

Tensors = dict[str, torch.Tensor]


def joint_norms(ch: GroupChannels, tensors: Tensors) -> np.ndarray:
    """Per atom of ``ch``, the L2 norm of its entries over all of the group's slices of ``tensors``."""
    total = torch.zeros(ch.width, dtype=torch.float64)
    for s in ch.slices:
        total += s.to_atoms(s.rows(tensors[s.param].detach()).double().pow(2).sum(1), ch.width)[0]
    return total.sqrt().numpy()


def keep_largest(v: torch.Tensor, ratio: float) -> torch.Tensor:
    """A boolean mask keeping all but the ``floor(ratio * numel)`` smallest magnitudes of ``v``."""
    drop = int(math.floor(ratio * v.numel() + 1e-9))
    keep = torch.ones(v.numel(), dtype=torch.bool, device=v.device)
    if drop:
        keep[torch.argsort(v.detach().abs().flatten(), stable=True)[:drop]] = False
    return keep.view_as(v)


@dataclasses.dataclass
class WeightSparsity:
    """What an unstructured hard prune did: weights set to zero in place.

    No shape changes, so dense kernels run exactly as fast as before: the gain needs sparse kernels or
    a sparse format. For masked retraining call :meth:`apply` after every optimizer step (or
    :meth:`mask_gradients` once) so that the pruned weights stay zero.
    """

    masks: dict[str, torch.Tensor]  # parameter name -> kept entries

    @property
    def layers(self) -> dict[str, float]:
        """Fraction of zeroed weights per parameter."""
        return {n: 1.0 - m.float().mean().item() for n, m in self.masks.items()}

    @property
    def sparsity(self) -> float:
        """Fraction of zeroed weights over all the pruned parameters."""
        total = sum(m.numel() for m in self.masks.values())
        kept = sum(int(m.sum()) for m in self.masks.values())
        return 1.0 - kept / max(total, 1)

    @torch.no_grad()
    def apply(self, model: nn.Module) -> None:
        """Zero the pruned weights of ``model`` again."""
        for name, mask in self.masks.items():
            p = model.get_parameter(name)
            p.mul_(mask.to(p.device, p.dtype))

    def mask_gradients(self, model: nn.Module) -> list[Any]:
        """Hooks zeroing the pruned weights' gradients (weight decay and momentum still need ``apply``)."""
        handles = []
        for name, mask in self.masks.items():
            p = model.get_parameter(name)
            keep = mask.to(p.device, p.dtype)
            handles.append(p.register_hook(lambda g, keep=keep: g * keep))
        return handles


class AugmentedLagrangian(Method):
    """The W-step / Z-step / multiplier-step loop; subclasses define the multiplier step."""

    roles = {"group": ALL_ROLES, "restricted": frozenset({"out", "norm"})}

    @dataclasses.dataclass
    class Options:
        rho: float = 0.1  # penalty coefficient of the augmented Lagrangian
        update_every: int = 391  # iterations between Z/multiplier steps: one CIFAR-10 epoch at batch 128
        rounds: int = 100  # done after rounds * update_every iterations (the paper's 100 epochs)
        unstructured: bool = False  # per-weight sparsity instead of channels of the discovered groups

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        if options.rho <= 0 or options.update_every < 1:
            raise ValueError(f"{self.name}: rho must be > 0 and update_every >= 1, got {options}")
        self.unstructured = bool(options.unstructured)
        self.picks_at_start = not self.unstructured  # the projection needs the Pruner's plan
        self.ratio_of: Callable[[str], float] | None = None
        self.z: Tensors = {}
        self.multipliers: Tensors = {}
        self.w_prev: Tensors = {}  # copies at the last accepted point (SLR)
        self.z_prev: Tensors = {}
        self.layer_ratio: dict[str, float] = {}
        self.history: list[dict[str, Any]] = []  # one entry per multiplier step
        self._v: Tensors | None = None  # W + Lambda/rho awaiting the Pruner's plan
        self._in_loss = False
        self.hard = False

    # -- the constrained tensors ---------------------------------------------------------------------
    def names(self) -> list[str]:
        """The parameters the constraint covers."""
        if self.unstructured:
            return list(self.layer_ratio)
        return list(dict.fromkeys(s.param for ch in self.channels for s in ch.slices))

    def weights(self) -> Tensors:
        return {n: self.model.get_parameter(n).detach() for n in self.names()}

    def start(self, ratio_of: Callable[[str], float]) -> None:
        self.ratio_of = ratio_of
        if not self.unstructured:
            return  # Z starts at the projection once the Pruner has planned (``chosen``)
        layers = (nn.modules.conv._ConvNd, nn.Linear)
        for ch in self.channels:
            for sl in ch.slices:
                module = self.model.get_submodule(sl.module)
                if (sl.is_filter or sl.role == "in") and isinstance(module, layers):
                    ratio = ratio_of(sl.module)
                    if ratio > 0:  # a layer at ratio 0 stays dense and out of the constraint
                        self.layer_ratio.setdefault(sl.param, ratio)
        if not self.layer_ratio:
            raise ValueError(f"{self.name}: no conv or linear weight to sparsify in this scope")
        self._reset()

    def _reset(self) -> None:
        """Lambda = 0, Z = Proj_S(W); the first accepted point is (W, Z)."""
        w = self.weights()
        self.multipliers = {n: torch.zeros_like(t) for n, t in w.items()}
        self.z = self.project(w)
        self.w_prev = {n: t.clone() for n, t in w.items()}
        self.z_prev = {n: t.clone() for n, t in self.z.items()}

    def project(self, v: Tensors) -> Tensors:
        """``Proj_S(v)``: unstructured by magnitude, or zero the channels the current plan prunes."""
        if self.unstructured:
            return {n: t * keep_largest(t, self.layer_ratio[n]) for n, t in v.items()}
        z = {n: t.clone() for n, t in v.items()}
        for ch in self.channels:
            if bool(ch.pruned.any()):
                for s in ch.slices:
                    t = z[s.param]
                    t.mul_(s.broadcast(1.0 - s.per_position(ch.pruned.to(t.device).double()), t))
        return z

    def shifted(self) -> Tensors:
        """``W + Lambda/rho``, the point the Z-step projects."""
        rho = self.options.rho
        return {n: w + self.multipliers[n] / rho for n, w in self.weights().items()}

    def lagrangian(self, w: Tensors, z: Tensors, f: float | None = None) -> float:
        """``f + sum <Lambda, W - Z> + rho/2 ||W - Z||^2`` (float64; ``f`` omitted when None)."""
        total = 0.0 if f is None else float(f)
        for n, lam in self.multipliers.items():
            d = (w[n] - z[n]).double()
            total += float((lam.double() * d).sum()) + 0.5 * self.options.rho * float(d.pow(2).sum())
        return total

    # -- training-loop hooks ---------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        self._in_loss = True
        rho, terms = self.options.rho, []
        for n in self.multipliers:
            w = self.model.get_parameter(n)
            terms.append((w - self.z[n] + self.multipliers[n] / rho).pow(2).sum())
        return 0.5 * rho * torch.stack(terms).sum() if terms else torch.zeros(())

    @torch.no_grad()
    def after_backward(self, scale: float = 1.0) -> None:
        if self._in_loss:  # the loop added penalty() to its loss: its gradient is already there
            self._in_loss = False
            return
        rho = self.options.rho
        for n in self.multipliers:
            w = self.model.get_parameter(n)
            if w.grad is None:
                w.grad = torch.zeros_like(w)
            w.grad.add_((rho * (w.detach() - self.z[n]) + self.multipliers[n]) * scale)

    def step(self) -> None:
        super().step()
        ue = self.options.update_every
        if self.t % ue == 0 and self.t < self.options.rounds * ue:
            self.update()

    @property
    def done(self) -> bool:
        return self.t >= self.options.rounds * self.options.update_every

    # -- the updates ---------------------------------------------------------------------------------
    def update(self) -> None:
        """Z-step and multiplier step (structured: the Z-step finishes once the Pruner has planned)."""
        self.before_z_step()
        v = self.shifted()
        if self.unstructured:
            z_old, self.z = self.z, self.project(v)
            self.after_z_step(z_old)
        else:
            self._v = v
            self.wants_plan = True

    def before_z_step(self) -> None:
        """Hook for SLR's first multiplier step (after the W-step)."""

    def after_z_step(self, z_old: Tensors) -> None:
        """ADMM's dual step ``U <- U + W - Z`` (``Lambda <- Lambda + rho (W - Z)``)."""
        rho = self.options.rho
        for n, w in self.weights().items():
            self.multipliers[n] += rho * (w - self.z[n])
        self.history.append({"t": self.t, "residual": self.residual()})

    def residual(self) -> float:
        """``sum over the constrained tensors of ||W - Z||`` (the paper's norms summed over layers)."""
        return sum(float((w - self.z[n]).double().norm()) for n, w in self.weights().items())

    # -- channel choice and the hard prune ----------------------------------------------------------------
    def selection_scores(self) -> dict[int, np.ndarray]:
        """Joint L2 norms of ``W + Lambda/rho`` at a Z-step, of ``W`` at the start and the hard prune."""
        tensors = self._v if (self._v is not None and not self.hard) else self.weights()
        return {ch.id: joint_norms(ch, tensors) for ch in self.channels}

    def chosen(self) -> None:
        super().chosen()
        if self.hard:
            return
        if not self.multipliers:
            self._reset()
        elif self._v is not None:
            z_old, self.z = self.z, self.project(self._v)
            self._v = None
            self.after_z_step(z_old)

    def hard_prune(self) -> WeightSparsity | None:
        """Structured: re-plan on the norms of W (the Pruner removes the channels). Unstructured: zero."""
        self.hard = True
        if not self.unstructured:
            self.wants_plan = True
            return None
        masks = {}
        with torch.no_grad():
            for n, ratio in self.layer_ratio.items():
                p = self.model.get_parameter(n)
                masks[n] = keep_largest(p, ratio)
                p.mul_(masks[n].to(p.dtype))
        report = WeightSparsity(masks)
        log.info(
            "%s: %.1f %% of %d weights zeroed (no dense speed-up)",
            self.name,
            100 * report.sparsity,
            sum(m.numel() for m in masks.values()),
        )
        return report

    # -- resume --------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        copy = lambda d: {n: t.clone() for n, t in d.items()}  # noqa: E731
        return {
            **super().state_dict(),
            "multipliers": copy(self.multipliers),
            "z": copy(self.z),
            "w_prev": copy(self.w_prev),
            "z_prev": copy(self.z_prev),
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        if sorted(state["multipliers"]) != sorted(self.names()):
            raise ValueError(f"{self.name} state covers other parameters than this pruner's")
        device = {n: self.model.get_parameter(n).device for n in self.names()}
        load = lambda d: {n: t.to(device[n]).clone() for n, t in d.items()}  # noqa: E731
        self.multipliers, self.z = load(state["multipliers"]), load(state["z"])
        self.w_prev, self.z_prev = load(state["w_prev"]), load(state["z_prev"])
        self.history = [dict(h) for h in state["history"]]


@register_method("admm")
class ADMM(AugmentedLagrangian):
    """ADMM pruning: the fixed dual step ``U <- U + W - Z`` at every update, no acceptance check."""
