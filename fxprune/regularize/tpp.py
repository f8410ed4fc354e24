"""TPP: trainability-preserving pruning (Wang and Fu, ICLR 2023).

For every layer writing a regularized group's channels, with flattened filters ``W`` (N x d), Gram
``G = W W^T`` and ``m_i = 1`` for kept channels::

    L_gram = (1/N^2) * || G * (1 - m m^T) ||_F^2
    L      = task_loss + gram_weight * lambda(t) * sum_layers L_gram

so pruned filters are driven to zero and de-correlated from the kept ones, and kept-kept entries are free.
After ``backward()``, ``grad += lambda(t) * param`` on the pruned filters and on the pruned channels' BN
gamma and beta. Every ``update_every`` iterations ``lambda = delta * t / update_every``, up to ``ceiling``;
then lambda is held for ``stabilize`` iterations during which the groups' pruned slices are hard zeroed,
one group every ``zero_every`` iterations (and kept at zero).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch

from .method import ALL_ROLES, Method, log, register_method

__all__ = ["TPP", "masked_gram_loss"]


def masked_gram_loss(gram: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """``mean((G * (1 - m m^T))^2)``: the Gram entries touching a pruned row or column, squared."""
    kept = kept.to(gram.device)
    free = kept[:, None] & kept[None, :]
    return gram.masked_fill(free, 0.0).pow(2).mean()


@register_method("tpp")
class TPP(Method):
    """Gram de-correlation of pruned filters plus a growing decay on them and their BN parameters."""

    roles = {"group": ALL_ROLES, "restricted": frozenset({"out", "norm"})}

    @dataclasses.dataclass
    class Options:
        update_every: int = 10  # K_u
        delta: float = 1e-4  # lambda = delta * t / K_u
        ceiling: float = 1.0  # lambda is held once it reaches this
        gram_weight: float = 1000.0  # the Gram term's weight
        stabilize: int = 10_000  # K_s: iterations held at the ceiling before pruning
        zero_every: int = 100  # during K_s, one more group is hard zeroed every this many iterations

    def __init__(self, model, channels, options) -> None:
        super().__init__(model, channels, options)
        self.lam = 0.0
        self.reached_at: int | None = None
        self.zeroed = 0
        self._gram_in_loss = False

    def gram_loss(self) -> torch.Tensor:
        """``sum_layers L_gram`` over every layer writing a regularized group (without lambda)."""
        total = None
        for ch in self.active:
            for w, kept in ch.filter_matrices(self.model):
                term = masked_gram_loss(w @ w.t(), kept)
                total = term if total is None else total + term
        return total if total is not None else torch.zeros(())

    def penalty(self) -> torch.Tensor:
        if self.lam == 0.0:
            return torch.zeros(())
        self._gram_in_loss = True
        return self.options.gram_weight * self.lam * self.gram_loss()

    def after_backward(self, scale: float = 1.0) -> None:
        if self.lam == 0.0:
            return
        if not self._gram_in_loss:  # the loop did not add penalty() to its loss: apply its gradient here
            loss = self.options.gram_weight * self.lam * scale * self.gram_loss()
            if loss.requires_grad:
                params = [s.tensor(self.model) for ch in self.active for s in ch.filter_slices()]
                params = list({id(p): p for p in params}.values())
                grads = torch.autograd.grad(loss, params, allow_unused=True)
                with torch.no_grad():
                    for p, g in zip(params, grads):
                        if g is None:
                            continue
                        if p.grad is None:
                            p.grad = torch.zeros_like(p)
                        p.grad.add_(g)
        self._gram_in_loss = False
        for ch in self.active:
            ch.add_decay(self.model, ch.pruned.double() * (self.lam * scale))

    def step(self) -> None:
        super().step()
        opts = self.options
        if self.reached_at is None and self.t % opts.update_every == 0:
            self.lam = min(opts.delta * self.t / opts.update_every, opts.ceiling)
            if self.lam >= opts.ceiling:
                self.reached_at = self.t
                log.info(
                    "lambda reached %g at iteration %d; stabilizing for %d", self.lam, self.t, opts.stabilize
                )
            elif self.t % (opts.update_every * 100) == 0:
                log.debug("iteration %d: lambda %.4g", self.t, self.lam)
        if self.reached_at is not None:
            active = self.active
            held = self.t - self.reached_at
            due = min(len(active), held // max(opts.zero_every, 1) + 1)
            if due > self.zeroed:
                log.info(
                    "iteration %d: hard zeroing group %s", self.t, [c.id for c in active[self.zeroed : due]]
                )
                self.zeroed = due
            for ch in active[: self.zeroed]:
                ch.zero_pruned(self.model)

    @property
    def done(self) -> bool:
        return self.reached_at is not None and self.t - self.reached_at >= self.options.stabilize

    @property
    def phase(self) -> str:
        if self.done:
            return "done"
        return "stabilizing" if self.reached_at is not None else "growing"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "lam": self.lam, "reached_at": self.reached_at, "zeroed": self.zeroed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.lam, self.reached_at, self.zeroed = (
            float(state["lam"]),
            state["reached_at"],
            int(state["zeroed"]),
        )
