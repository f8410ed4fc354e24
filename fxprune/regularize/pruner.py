"""``fxprune.Pruner``: regularize-then-prune from any training loop.

Example::

    pruner = fxprune.Pruner(model, torch.randn(1, 3, 32, 32), method="greg1", ratio=0.5)
    for x, y in loader:
        loss = F.cross_entropy(model(x), y) + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        pruner.after_backward()
        optimizer.step()
        pruner.step()
        if pruner.done:
            break
    report = pruner.prune()  # slims the model in place and verifies it; then fine-tune
"""

from __future__ import annotations

import dataclasses
import fnmatch
import logging
from collections.abc import Iterable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..analysis import analyze
from ..capture.inputs import ExampleInputs
from ..capture.outputs import OutputSelector
from ..plan import Plan, Planner, plan_from_counts
from ..prune import PruneReport, apply_plan
from ..targets import check_cost_weight, plan_for_target
from .channels import GroupChannels
from .distributed import (
    average_across_ranks,
    check_same_across_ranks,
    plan_fingerprint,
    unwrap_model,
    weights_fingerprint,
)
from .method import Method, get_method, make_options

__all__ = ["Pruner", "SCOPES"]

log = logging.getLogger("fxprune.regularize")

SCOPES = ("group", "restricted")


def is_block_internal(channels: GroupChannels) -> bool:
    """Channels written by exactly one conv or linear layer (not tied to others by a residual add)."""
    writers = {s.module for s in channels.filter_slices()}
    return len(writers) == 1


class Pruner:
    """Drive one pruning method through a training loop, then slim the model.

    ``method``: ``"l1"``, ``"l2"``, ``"bn_scale"``, ``"taylor"``, ``"greg1"``, ``"greg2"``, ``"tpp"``,
    ``"slr"``, ``"admm"`` (``unstructured=True``: weight sparsity ``ratio`` per layer instead of channels).
    ``ratio`` (or ``target_flops``, a fraction of the dense FLOPs) sets how many channels go; ``ratios``
    maps module-name globs to their own ratio; ``cost_weight`` (with ``target_flops`` and
    ``global_ranking``) weights the ranking by each group's FLOPs per channel
    (:func:`fxprune.targets.ranking_weights`); ``planner`` (a :class:`fxprune.plan.Planner`, e.g.
    ``fxprune.targets.SizeTargetPlanner`` or ``fxprune.deploy.LatencyPlanner``) chooses them instead.
    ``scope="group"`` regularizes every discovered group
    (residual-coupled ones included); ``"restricted"`` only groups written by a single layer (the
    block-internal convs the papers prune). Other keyword arguments are the method's schedule constants
    (see ``Pruner.options_of(method)``). ``outputs`` picks the model's interface from its output (see
    :func:`fxprune.analyze`).

    AMP: pass ``scaler`` to ``after_backward`` while gradients are still scaled. Gradient accumulation:
    call ``after_backward()`` and ``step()`` once per optimizer step, and scale ``penalty()`` like the loss.

    Distributed training: give each rank's Pruner the DDP-wrapped model (or its ``.module``). Scores are
    averaged across ranks, and the Pruner checks at creation and at :meth:`prune` that every rank holds the
    same weights and chose the same channels (``RankMismatchError`` names the ranks that differ).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: ExampleInputs,
        method: str = "l1",
        ratio: float = 0.5,
        *,
        ratios: dict[str, float] | None = None,
        target_flops: float | None = None,
        planner: Planner | None = None,
        scope: str = "group",
        ignore: Iterable[str | type | nn.Module] = (),
        leaf_modules: Iterable[str | type] = (),
        round_to: int = 1,
        min_width: int = 1,
        global_ranking: bool = False,
        cost_weight: float = 0.0,
        outputs: OutputSelector | None = None,
        **options: Any,
    ) -> None:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if not 0.0 <= ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {ratio}")
        if target_flops is not None and not 0.0 < target_flops < 1.0:
            raise ValueError(f"target_flops is a fraction of the dense FLOPs in (0, 1), got {target_flops}")
        if planner is not None and target_flops is not None:
            raise ValueError("give either planner= or target_flops, not both")
        if planner is not None and not isinstance(planner, Planner):
            raise TypeError(
                f"planner must have a plan(analysis, example_inputs, importance) method, got {planner!r}"
            )
        check_cost_weight(cost_weight, sized=target_flops is not None, global_ranking=global_ranking)
        cls = get_method(method)
        opts = make_options(cls, options)
        model = unwrap_model(model)
        self.model = model
        self.example_inputs = example_inputs
        self.scope = scope
        self.ratio, self.ratios, self.target_flops = ratio, dict(ratios or {}), target_flops
        self.planner, self.cost_weight = planner, cost_weight
        self.plan_options = dict(round_to=round_to, min_width=min_width, global_ranking=global_ranking)
        self.analysis = analyze(
            model,
            example_inputs,
            ignore=ignore,
            leaf_modules=leaf_modules,
            outputs=outputs,
            round_to=round_to,
        )
        self.analysis.check_ratio_patterns(self.ratios)
        roles = cls.roles[scope]
        channels = []
        for g in self.analysis.groups:
            if g.prunable == 0:
                continue
            ch = GroupChannels(g, model, roles)
            if ch.slices and (scope == "group" or is_block_internal(ch)):
                channels.append(ch)
        if not channels:
            raise ValueError(f"no prunable group for method {method!r} in scope {scope!r}")
        check_same_across_ranks(weights_fingerprint(model), "weights when the Pruner was created")
        self.channels = channels
        self.view = dataclasses.replace(self.analysis, groups=[c.group for c in channels])
        self.method: Method = cls(model, channels, opts)
        self.method.start(self.module_ratio)
        self.plan: Plan | None = None
        self.report: PruneReport | None = None
        log.info(
            "%s (%s scope): %d groups regularized, options %s",
            method,
            scope,
            len(channels),
            dataclasses.asdict(opts),
        )
        if self.method.picks_at_start:
            self._choose()

    @staticmethod
    def options_of(method: str) -> dict[str, Any]:
        """The schedule constants of ``method`` and their defaults (the papers' values)."""
        return dataclasses.asdict(get_method(method).Options())

    # -- training-loop hooks ---------------------------------------------------------------------------
    def penalty(self) -> torch.Tensor:
        """The loss term of loss-based methods (TPP's Gram term); zero for the others."""
        self._check_live()
        return self.method.penalty()

    def after_backward(self, scaler: torch.amp.GradScaler | None = None) -> None:
        """Add the gradient-based terms; call after ``backward()``, before ``optimizer.step()``."""
        self._check_live()
        scale = float(scaler.get_scale()) if scaler is not None and scaler.is_enabled() else 1.0
        self.method.after_backward(scale)

    def step(self, loss: float | torch.Tensor | None = None) -> None:
        """Advance the schedule by one iteration; call after ``optimizer.step()``. ``loss``: the task loss
        of the iteration, for methods whose updates check the objective (``slr``)."""
        self._check_live()
        if loss is not None:
            self.method.observe_loss(float(loss))
        self.method.step()
        if self.method.wants_plan:
            self._choose()

    @property
    def done(self) -> bool:
        """Regularization has finished: time to call :meth:`prune`."""
        return self.method.done

    @property
    def phase(self) -> str:
        return self.method.phase

    @property
    def iteration(self) -> int:
        return self.method.t

    # -- choosing and removing channels ----------------------------------------------------------------
    def _choose(self) -> None:
        scores = average_across_ranks(self.method.selection_scores())  # identical choices on every rank
        importance = lambda model, group: scores[group.id]  # noqa: E731
        counts = self.method.removal_counts()
        if counts is not None:  # the method sets every group's width itself
            opts = self.plan_options
            plan = plan_from_counts(self.view.groups, scores, counts, opts["round_to"], opts["min_width"])
        elif self.planner is not None:
            plan = self.planner.plan(self.view, self.example_inputs, importance)
        elif self.target_flops is not None:
            plan = plan_for_target(
                self.view,
                self.example_inputs,
                self.target_flops,
                "flops",
                importance=importance,
                ratios=self.ratios,
                cost_weight=self.cost_weight,
                **self.plan_options,
            )
        else:
            plan = self.view.plan(self.ratio, importance=importance, ratios=self.ratios, **self.plan_options)
        self._set_plan(plan)
        self.method.chosen()

    def _set_plan(self, plan: Plan) -> None:
        self.plan = plan
        for ch in self.channels:
            ch.set_pruned(plan.remove.get(ch.id, np.zeros(0, dtype=np.int64)))
        chosen = {ch.id: int(ch.pruned.sum()) for ch in self.channels if bool(ch.pruned.any())}
        log.info("channels to prune: %d in %d groups %s", sum(chosen.values()), len(chosen), chosen)

    def module_ratio(self, module: str) -> float:
        """The ratio for ``module``: the first pattern of ``ratios`` matching its name, else ``ratio``."""
        if self.target_flops is not None:
            raise ValueError("target_flops sets channel widths; weight sparsity takes ratio= and ratios=")
        for pattern, r in self.ratios.items():
            if fnmatch.fnmatchcase(module, pattern):
                return r
        return self.ratio

    def pruned_channels(self) -> dict[int, list[int]]:
        """The chosen atoms per group id (empty until chosen)."""
        if self.plan is None:
            return {}
        return {gid: idx.tolist() for gid, idx in self.plan.remove.items()}

    def prune(self, *, calibration=None, verify: bool = True, tol: float = 1e-4) -> PruneReport:
        """Remove the chosen channels: slim the model in place and check it against the masked original.

        ``calibration``: batches (inputs, or tuples starting with the input) from which methods choosing
        from data (``ccm``) take their statistics.
        """
        self._check_live()
        if calibration is not None:
            self.method.calibrate(calibration)
            self.plan = None
        if not self.method.done:
            log.warning(
                "pruning at iteration %d before regularization finished (%s)", self.method.t, self.phase
            )
        check_same_across_ranks(weights_fingerprint(self.model), "weights at prune()")
        weights = self.method.hard_prune()
        if weights is not None:  # the method zeroed weights itself (unstructured): no shape changes
            self.report = weights
            return weights
        if self.plan is None or self.method.wants_plan:
            self._choose()
        self.method.close()
        check_same_across_ranks(plan_fingerprint(self.plan.remove), "chosen channels at prune()")
        self.report = apply_plan(self.view, self.plan, self.example_inputs, verify=verify, tol=tol)
        log.info("pruned: FLOPs %.3gx, params %.3gx", self.report.flops_ratio, self.report.params_ratio)
        return self.report

    def _check_live(self) -> None:
        if self.report is not None:
            raise RuntimeError("the model was already pruned by this Pruner; create a new one to prune again")

    # -- resume ----------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume the schedule exactly (save it next to the model and optimizer)."""
        return {
            "method": self.method.name,
            "scope": self.scope,
            "groups": [[ch.id, ch.width] for ch in self.channels],
            "plan": None if self.plan is None else {int(k): v.tolist() for k, v in self.plan.remove.items()},
            "state": self.method.state_dict(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict` taken from a Pruner built the same way on the same model."""
        expected = {
            "method": self.method.name,
            "scope": self.scope,
            "groups": [[c.id, c.width] for c in self.channels],
        }
        for key, value in expected.items():
            got = state.get(key)
            if (list(map(list, got)) if key == "groups" and got is not None else got) != value:
                raise ValueError(
                    f"pruner state does not match this Pruner: {key} is {got!r} in the state, {value!r} here"
                )
        if state["plan"] is not None:
            self._set_plan(Plan({int(k): np.asarray(v, dtype=np.int64) for k, v in state["plan"].items()}))
        self.method.load_state_dict(state["state"])
