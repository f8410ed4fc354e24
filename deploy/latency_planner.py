"""The latency-budget planner for ``fxprune.prune``, and the one-call ``prune`` with ``target_latency``.

The core never imports ``fxprune.deploy``: it asks a :class:`fxprune.plan.Planner` for the plan.
:class:`LatencyPlanner` is that planner for a latency budget on a runtime::

    fxprune.prune(model, x, planner=fxprune.deploy.LatencyPlanner("0.5x", backend="ort"))
    fxprune.deploy.prune(model, x, target_latency="0.5x", backend="ort")  # the same, in one call

With ``by_latency=True`` a FLOPs target is met the same way (:class:`fxprune.deploy.FlopsLatencyPlanner`):
channels go where the runtime's latency falls most, until the FLOPs reach the target.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from fxprune.analysis import Analysis
from fxprune.capture.inputs import ExampleInputs, as_args_kwargs
from fxprune.importance.registry import Importance
from fxprune.plan import Plan
from fxprune.prune import PruneReport
from fxprune.prune import prune as prune_model

from .alignment import default_round_to
from .budget import BudgetResult, parse_latency_target, plan_for_latency
from .flops_planner import FlopsLatencyPlanner
from .latency_model import LatencyModel
from .lut import LatencyTable

__all__ = ["LatencyPlanner", "prune"]


@dataclass
class LatencyPlanner:
    """A :class:`fxprune.plan.Planner` for a latency ``target`` (``"0.5x"`` of dense or ``"12ms"``).

    The fields are those of :func:`fxprune.deploy.plan_for_latency` (``round_to=None``: the backend's
    alignment). After planning, ``result`` holds the :class:`BudgetResult` (estimates, measured ratio,
    rounds). A planner asked again for the same model (a training method re-choosing its channels) reuses
    the dense latency it measured and starts from the internal target that met the budget last time.
    """

    target: str | float
    backend: str = "ort"
    round_to: int | None = None
    min_width: int = 1
    precision: str = "fp32"
    threads: int = 1
    validate: bool = True
    tolerance: float = 0.1
    max_rounds: int = 4
    table: LatencyTable | None = None
    latency_model: LatencyModel | None = None
    measure_kw: dict[str, Any] | None = None
    progress: Callable[[int, int], None] | None = None
    result: BudgetResult | None = field(default=None, init=False)
    _planned_for: tuple | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        parse_latency_target(self.target)  # a bad budget fails here, before any analysis

    def plan(self, analysis: Analysis, example_inputs: Any, importance: str | Importance = "l2") -> Plan:
        key = (id(analysis.model), _shapes(example_inputs), [g.width for g in analysis.groups])
        earlier = self.result if key == self._planned_for else None
        self.result = plan_for_latency(
            analysis,
            example_inputs,
            self.target,
            self.backend,
            latency_model=self.latency_model,
            table=self.table,
            importance=importance,
            round_to=self.round_to,
            min_width=self.min_width,
            precision=self.precision,
            threads=self.threads,
            validate=self.validate,
            tolerance=self.tolerance,
            max_rounds=self.max_rounds,
            measure_kw=self.measure_kw,
            progress=self.progress,
            start=earlier.internal_target if earlier is not None else None,
            dense_ms=earlier.dense_ms if earlier is not None else None,
        )
        self._planned_for = key
        return self.result.plan


def _shapes(example_inputs: Any) -> tuple:
    """The shapes of the example input tensors (what the dense latency depends on)."""
    args, kwargs = as_args_kwargs(example_inputs)
    values = [*args, *(kwargs[k] for k in sorted(kwargs))]
    return tuple(tuple(v.shape) if isinstance(v, torch.Tensor) else repr(v) for v in values)


def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    *,
    target_latency: str | float | None = None,
    backend: str = "ort",
    precision: str = "fp32",
    importance: str | Importance = "l2",
    ignore: Iterable[str | type | nn.Module] = (),
    leaf_modules: Iterable[str | type] = (),
    round_to: int | None = None,
    min_width: int = 1,
    verify: bool = True,
    tol: float = 1e-4,
    by_latency: bool = False,
    **options: Any,
) -> PruneReport:
    """:func:`fxprune.prune`, plus ``target_latency`` (``"0.5x"`` of the dense latency or ``"12ms"``).

    ``round_to`` defaults to ``backend``'s alignment at ``precision`` (:func:`default_round_to`). With
    ``target_latency`` the plan comes from :class:`LatencyPlanner` on ``backend`` at ``precision``
    (``"int8"``: layer tables and checks time quantized files); with ``target_flops`` and
    ``by_latency=True``, from :class:`FlopsLatencyPlanner`: the FLOPs target is met by removing channels
    where ``backend``'s measured layer latency at ``precision`` falls most per unit of importance, not the
    same share everywhere (for INT8 deployment: narrow, high-resolution layers run INT8 kernels at a low
    rate per MAC, and a plain FLOPs target keeps them whole); otherwise every argument goes to
    :func:`fxprune.prune` (``options``: ``ratios``, ``global_ranking``, ``target_flops``,
    ``target_params``, ``planner``).
    """
    common = dict(importance=importance, ignore=ignore, leaf_modules=leaf_modules, verify=verify, tol=tol)
    if by_latency:
        target_flops = options.pop("target_flops", None)
        if target_flops is None or target_latency is not None or options:
            extra = sorted(options) + (["target_latency"] if target_latency is not None else [])
            raise ValueError(
                "by_latency=True meets a target_flops=... where the backend's latency falls most: give "
                f"target_flops{' and not ' + ', '.join(extra) if extra else ''}"
            )
        round_to = default_round_to(backend, precision) if round_to is None else round_to
        flops_planner = FlopsLatencyPlanner(target_flops, backend, precision, round_to, min_width)
        return prune_model(model, example_inputs, planner=flops_planner, round_to=round_to, **common)
    if target_latency is None:
        round_to = default_round_to(backend, precision) if round_to is None else round_to
        return prune_model(
            model, example_inputs, ratio, round_to=round_to, min_width=min_width, **common, **options
        )
    if options:
        raise ValueError(f"target_latency does not combine with {', '.join(sorted(options))}")
    planner = LatencyPlanner(
        target_latency, backend, round_to=round_to, min_width=min_width, precision=precision
    )
    return prune_model(model, example_inputs, planner=planner, **common)
