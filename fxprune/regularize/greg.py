"""GReg-1 and GReg-2: growing L2 penalties on the channels to prune (Wang et al., ICLR 2021).

The penalty is added to the gradients, ``grad(w_i) += lambda_i * w_i``, after ``backward()`` and before
the optimizer step. Every ``update_every`` iterations (K_u) the pruned channels' lambda grows by ``delta``;
a group stops growing once lambda exceeds ``ceiling``, and all stop when the moving average of
``mean|w_K| / mean|w_P|`` exceeds ``mag_ratio_limit`` in every group. Lambda is then held for
``stabilize`` iterations (K_s) and the pruner is done.

GReg-2 first raises a uniform penalty on every channel by ``pick_delta`` up to ``pick_ceiling`` (weights
in flat directions shrink most), then chooses the channels by their current magnitudes, and continues
with the growing penalty on them and a constant ``kept_penalty`` (slightly negative) on the kept ones.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import torch

from .method import Method, log, register_method

__all__ = ["GReg1", "GReg2"]


@dataclasses.dataclass
class _GroupState:
    lam_pruned: float = 0.0
    lam_kept: float = 0.0
    ema: float | None = None
    finished_at: int | None = None


@register_method("greg1")
class GReg1(Method):
    """GReg-1: channels chosen by L1 at the start, their penalty grows until they are negligible."""

    @dataclasses.dataclass
    class Options:
        update_every: int = 10  # K_u: iterations between lambda updates (5 on ImageNet)
        delta: float = 1e-4  # lambda growth per update
        ceiling: float = 1.0  # a group stops growing when lambda exceeds this
        mag_ratio_limit: float = 1000.0  # early stop: EMA of mean|w_K| / mean|w_P| above this everywhere
        stabilize: int = 10_000  # K_s: iterations lambda is held before pruning (40k on ImageNet)

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        self.states = [_GroupState() for _ in channels]
        self.all_finished_at: int | None = None

    # the growing phase ------------------------------------------------------------------------------
    def chosen(self) -> None:
        super().chosen()
        if self.t == 0:
            self._update()

    def step(self) -> None:
        super().step()
        if self.t % self.options.update_every == 0:
            self._update()

    def _grow(self, state: _GroupState) -> None:
        state.lam_pruned += self.options.delta

    def _update(self) -> None:
        """One schedule update (every K_u iterations, and at iteration 0)."""
        growing = [(s, c) for s, c in zip(self.states, self.channels) if s.finished_at is None]
        capped = []
        for state, ch in growing:
            if not bool(ch.pruned.any()):
                state.finished_at = self.t
                continue
            ratio = ch.magnitude_ratio(self.model)
            state.ema = ratio if state.ema is None else 0.9 * state.ema + 0.1 * ratio
            self._grow(state)
            if state.lam_pruned > self.options.ceiling:
                state.finished_at = self.t
                capped.append(ch.id)
        if capped:
            log.info("iteration %d: lambda passed the ceiling in groups %s", self.t, capped)
        active = [s for s, c in zip(self.states, self.channels) if bool(c.pruned.any())]
        limit = self.options.mag_ratio_limit
        if growing and active and all(s.ema is not None and s.ema > limit for s in active):
            for s in active:
                if s.finished_at is None:
                    s.finished_at = self.t
            log.info(
                "magnitude ratio above %g in every group at iteration %d",
                self.options.mag_ratio_limit,
                self.t,
            )
        if self.all_finished_at is None and all(s.finished_at is not None for s in self.states):
            self.all_finished_at = self.t
            log.info(
                "regularization finished growing at iteration %d; holding for %d",
                self.t,
                self.options.stabilize,
            )
        if growing:
            lam = max((s.lam_pruned for s in active), default=0.0)
            ema = [s.ema for s in active if s.ema is not None]
            log.debug(
                "iteration %d: lambda max %.4g, magnitude ratio min %.4g, %d/%d groups growing",
                self.t,
                lam,
                min(ema) if ema else math.nan,
                sum(s.finished_at is None for s in self.states),
                len(self.states),
            )

    # penalties --------------------------------------------------------------------------------------
    def coefficients(self, index: int) -> torch.Tensor:
        """Lambda per atom of group ``index``."""
        state, ch = self.states[index], self.channels[index]
        pruned = ch.pruned.double()
        return pruned * state.lam_pruned + (1.0 - pruned) * state.lam_kept

    def after_backward(self, scale: float = 1.0) -> None:
        for i, ch in enumerate(self.channels):
            coef = self.coefficients(i)
            if bool(coef.any()):
                ch.add_decay(self.model, coef * scale)

    @property
    def done(self) -> bool:
        return self.all_finished_at is not None and self.t - self.all_finished_at >= self.options.stabilize

    @property
    def phase(self) -> str:
        if self.done:
            return "done"
        return "stabilizing" if self.all_finished_at is not None else "growing"

    def lambdas(self) -> dict[int, float]:
        """The pruned channels' current lambda per group id."""
        return {c.id: s.lam_pruned for s, c in zip(self.states, self.channels)}

    def state_dict(self) -> dict[str, Any]:
        return {
            **super().state_dict(),
            "groups": [dataclasses.asdict(s) for s in self.states],
            "all_finished_at": self.all_finished_at,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.states = [_GroupState(**s) for s in state["groups"]]
        self.all_finished_at = state["all_finished_at"]


@register_method("greg2")
class GReg2(GReg1):
    """GReg-2: a uniform growing penalty picks the channels (by the magnitudes it leaves), then GReg-1."""

    @dataclasses.dataclass
    class Options(GReg1.Options):
        pick_delta: float = 1e-5  # uniform penalty growth per update while picking
        pick_ceiling: float = 1e-2  # picking ends when the uniform penalty passes this
        # constant lambda on kept channels while pruning (a slight push up; may be negative)
        kept_penalty: float = dataclasses.field(default=-1e-4, metadata={"signed": True})

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        self.picking = True

    def _grow(self, state: _GroupState) -> None:
        if self.picking:
            state.lam_pruned += self.options.pick_delta
            state.lam_kept = state.lam_pruned
        else:
            state.lam_pruned += self.options.delta
            state.lam_kept = self.options.kept_penalty

    def _update(self) -> None:
        if not self.picking:
            super()._update()
            return
        active = [s for s, c in zip(self.states, self.channels) if bool(c.pruned.any())]
        for s in active:
            self._grow(s)
        if all(s.lam_pruned > self.options.pick_ceiling for s in active):
            log.info("picking finished at iteration %d: choosing channels by their magnitudes", self.t)
            self.wants_plan = True

    def chosen(self) -> None:
        was_picking_done = self.wants_plan
        super().chosen()
        if was_picking_done:
            self.picking = False
            for s in self.states:
                s.lam_kept = self.options.kept_penalty
                s.ema = None

    @property
    def phase(self) -> str:
        return "picking" if self.picking else super().phase

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "picking": self.picking, "wants_plan": self.wants_plan}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.picking = state["picking"]
        self.wants_plan = state["wants_plan"]
