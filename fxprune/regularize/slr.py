"""SLR: surrogate Lagrangian relaxation pruning (Gurevin et al., IJCAI 2021, arXiv 2012.10079).

The ADMM loop of :mod:`fxprune.regularize.admm` (W-step, Z-step ``Z = Proj_S(W + Lambda/rho)``, hard
prune), with SLR's multiplier step, taken twice per update: after the W-step and after the Z-step::

    Lambda <- Lambda + s_k (W - Z)      only if L(W, Z, Lambda) < L(W_prev, Z_prev, Lambda)

where ``(W_prev, Z_prev)`` are *copies* of the last accepted point (the surrogate optimality condition);
otherwise Lambda keeps its value. On acceptance the step size contracts::

    alpha_k = 1 - 1 / (M * k^(1 - 1/k^r))
    s_k     = alpha_k * s_{k-1} * ||W_prev - Z_prev|| / ||W - Z||      (norms summed over the tensors)

with ``k`` counting the accepted steps from 1 and ``s_0 = s0``. ``L`` contains the task loss ``f`` when
the training loop passes it (``pruner.step(loss=loss.item())``: the mean over the iterations since the
last update is ``f(W)``); otherwise the condition compares the constraint terms only. Each check is
logged and kept in ``history``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .admm import AugmentedLagrangian, Tensors
from .distributed import sum_across_ranks
from .method import log, register_method

__all__ = ["SLR", "step_factor"]


def step_factor(k: int, M: float, r: float) -> float:
    """``alpha_k = 1 - 1 / (M * k^(1 - 1/k^r))``."""
    return 1.0 - 1.0 / (M * k ** (1.0 - 1.0 / k**r))


@register_method("slr")
class SLR(AugmentedLagrangian):
    """Surrogate Lagrangian relaxation: multiplier steps accepted only when the Lagrangian decreased."""

    @dataclasses.dataclass
    class Options(AugmentedLagrangian.Options):
        s0: float = 0.01  # initial multiplier step size
        M: float = 300.0  # step-size contraction constant
        r: float = 0.1  # step-size contraction exponent

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        if options.M <= 1 or not 0 < options.r < 1:
            raise ValueError(f"slr: M must be > 1 and r in (0, 1), got M={options.M}, r={options.r}")
        self.s = float(options.s0)
        self.k = 1
        self.f_prev: float | None = None
        self._loss_sum, self._loss_count = 0.0, 0
        self._warned = False

    def observe_loss(self, value: float) -> None:
        self._loss_sum += float(value)
        self._loss_count += 1

    def before_z_step(self) -> None:
        total, count = sum_across_ranks([self._loss_sum, self._loss_count])  # one decision on every rank
        f = total / count if count else None
        self._loss_sum, self._loss_count = 0.0, 0
        if f is None and not self._warned:
            log.warning("slr: no loss passed to step(loss=...): the condition compares constraint terms only")
            self._warned = True
        self._f = f
        self.multiplier_step("after W-step", f)

    def after_z_step(self, z_old: Tensors) -> None:
        self.multiplier_step("after Z-step", self._f)

    def multiplier_step(self, when: str, f: float | None) -> bool:
        """Take ``Lambda += s_k (W - Z)`` if the surrogate optimality condition holds; say whether it did."""
        w = self.weights()
        f_prev = self.f_prev if f is not None else None
        now = self.lagrangian(w, self.z, f if f_prev is not None else None)
        before = self.lagrangian(self.w_prev, self.z_prev, f_prev)
        accepted = now < before
        entry = {"t": self.t, "when": when, "accepted": accepted, "lagrangian": now, "previous": before}
        if accepted:
            n_prev = sum(float((self.w_prev[n] - self.z_prev[n]).double().norm()) for n in w)
            n_now = sum(float((w[n] - self.z[n]).double().norm()) for n in w)
            alpha = step_factor(self.k, self.options.M, self.options.r)
            if n_prev > 0 and n_now > 0:
                self.s = alpha * self.s * n_prev / n_now
            entry.update(k=self.k, alpha=alpha, norm_prev=n_prev, norm_now=n_now)
            self.k += 1
            for n, t in w.items():
                self.multipliers[n] += self.s * (t - self.z[n])
            self.w_prev = {n: t.clone() for n, t in w.items()}
            self.z_prev = {n: t.clone() for n, t in self.z.items()}
            if f is not None:
                self.f_prev = f
        entry["s"] = self.s
        self.history.append(entry)
        log.info(
            "slr iteration %d, %s: L %.6g vs %.6g at the last accepted point: %s (s = %.4g)",
            self.t,
            when,
            now,
            before,
            "accepted" if accepted else "rejected",
            self.s,
        )
        return accepted

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "s": self.s,
            "k": self.k,
            "f_prev": self.f_prev,
            "loss_sum": self._loss_sum,
            "loss_count": self._loss_count,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.s, self.k, self.f_prev = float(state["s"]), int(state["k"]), state["f_prev"]
        self._loss_sum, self._loss_count = float(state["loss_sum"]), int(state["loss_count"])
