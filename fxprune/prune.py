"""``fxprune.prune``: analyse, plan, slim in place and verify, in one call."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import torch
from torch import nn

from .analysis import Analysis, analyze
from .capture import run_model
from .capture.inputs import ExampleInputs, set_training
from .capture.modules import named_tensors, walks_tree_once
from .capture.outputs import OutputSelector, selected_tensors
from .gc_pause import paused_gc
from .groups.channel_order import channel_orders
from .groups.grouping import Group
from .importance.registry import Importance
from .measure import count_params, try_count_flops
from .measure.flops import flop_counter
from .plan import Plan, Planner, RatioPlanner, resolve_round_to
from .slim import slim_model
from .targets import PlanCosts, SizeTargetPlanner, check_cost_weight
from .verify import compare_outputs, masked
from .verify.precision import cast_inputs, promote_to_fp32, restore_dtypes

__all__ = ["PruneReport", "VerificationError", "apply_plan", "prune"]

T = TypeVar("T")


class VerificationError(RuntimeError):
    """The slim model does not compute what the masked original computes."""


@dataclass
class PruneReport:
    """What ``prune`` did: sizes before/after, per-group widths, verification figures, timings.

    ``flops_before``/``flops_after`` are None when they could not be counted (``warnings`` says why).
    ``exact_error`` is the slim model's largest relative difference from the masked original over the exactly
    removable channels; ``approx_error``, where groups were removed approximately (``approx_groups``, a
    LayerNorm over their channels), is its difference from that same output.
    """

    params_before: int
    params_after: int
    flops_before: int | None
    flops_after: int | None
    widths: list[tuple[int, str, int, int]]  # (group id, first module, before, after)
    exact_error: float | None
    approx_error: float | None
    approx_groups: list[int]
    capture_method: str
    analysis_seconds: float
    slim_seconds: float
    changes: dict[str, tuple[int, int]] = field(default_factory=dict)
    spec: dict[str, list[int]] = field(default_factory=dict)
    round_to: int | None = None  # the channel multiple the plan kept (None: the plan came from elsewhere)
    timings: dict[str, float] = field(default_factory=dict)  # seconds per step (analysis, plan, slim, ...)
    warnings: list[str] = field(default_factory=list)  # report figures that could not be computed

    @property
    def flops_ratio(self) -> float:
        """Dense FLOPs / slim FLOPs (nan when either could not be counted)."""
        if self.flops_before is None or self.flops_after is None:
            return float("nan")
        return self.flops_before / max(self.flops_after, 1)

    @property
    def params_ratio(self) -> float:
        return self.params_before / max(self.params_after, 1)

    @property
    def verified(self) -> bool:
        return self.exact_error is not None


def _removed_roots(groups: list[Group], plan: Plan, exact_only: bool) -> set[int]:
    out: set[int] = set()
    for g in groups:
        if g.id in plan.remove and (g.exact or not exact_only):
            out.update(g.atoms[plan.remove[g.id]].tolist())
    return out


def _exact_plan(groups: list[Group], plan: Plan) -> Plan:
    exact = {g.id for g in groups if g.exact}
    return Plan({gid: idx for gid, idx in plan.remove.items() if gid in exact})


def _masked_output(analysis: Analysis, plan: Plan, exact_only: bool, example_inputs: Any) -> Any:
    """The output of the (not yet slimmed) model with the plan's removed channels masked out."""
    removed = _removed_roots(analysis.groups, plan, exact_only)
    prop = analysis.propagation
    captured = analysis.captured
    graph = captured.graph_module.graph if captured.method != "export" else None  # one node per layer call
    with masked(analysis.model, prop.module_io, prop.table, removed, prop.table.blocks, graph):
        with torch.no_grad():
            return run_model(analysis.model, example_inputs)


def _check(
    analysis: Analysis, reference: Any, slim: nn.Module, example_inputs: Any
) -> tuple[float, list[str]]:
    """Run the slim model and compare its output with the masked original's ``reference`` output."""
    with torch.no_grad():
        try:
            set_training(slim, False)
            out = run_model(slim, example_inputs)
        except Exception as e:
            raise VerificationError(
                f"the slim model fails to run ({type(e).__name__}: {e}); a channel-dependent constant in "
                f"the model's code was not detected (captured by {analysis.captured.method}); declare the "
                "module holding it in ignore=[...] and report the model"
            ) from e
    select = lambda output: selected_tensors(analysis.outputs, output)  # noqa: E731
    return compare_outputs(select(reference), select(out))


class _Stopwatch:
    """Seconds spent per step, summed over repeated steps."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, step: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[step] = self.seconds.get(step, 0.0) + time.perf_counter() - start


class _PassFlops:
    """FLOPs before and after slimming: from the analysis's cost table, else counted on verification passes.

    With an exact cost table (:class:`fxprune.targets.PlanCosts`) no pass is counted. Otherwise the passes
    verification makes anyway are counted; if the counter itself fails (torch's dispatch mode on an unusual
    model), the pass runs again without it and the figure falls back to
    :func:`fxprune.measure.try_count_flops` (None and a reason if that fails too).
    """

    def __init__(self, model: nn.Module, example_inputs: Any, figures: list[int] | None = None) -> None:
        self.model, self.example_inputs = model, example_inputs
        self.known = figures is not None
        self.figures: list[int | None] = list(figures or [])
        self.notes: list[str] = []

    def run(self, forward: Callable[[], T]) -> T:
        if self.known:
            return forward()
        try:
            with flop_counter() as counter:
                out = forward()
            self.figures.append(int(counter.get_total_flops()))
            return out
        except Exception:
            out = forward()  # a failure of the model itself raises again here, without the counter
            self.count()
            return out

    def count(self) -> None:
        """Count the model as it is now with a separate pass."""
        if self.known:
            return
        figure, note = try_count_flops(self.model, self.example_inputs)
        self.figures.append(figure)
        if note:
            self.notes.append(note)


def _raise_if_wrong(exact_error: float, problems: list[str], tol: float) -> None:
    if problems:
        raise VerificationError("slimming changed the model's outputs: " + "; ".join(problems))
    if exact_error > tol:
        raise VerificationError(
            f"slim model differs from the masked original by {exact_error:.3g} (relative) > {tol:g}; "
            "please report this model: an op was handled wrongly"
        )


def _orders(analysis: Analysis, plan: Plan) -> dict:
    """The order of the kept channels of layers fed by a followed channel shuffle (see ``slim_model``)."""
    gm = analysis.captured.graph_module
    return channel_orders(analysis.propagation, gm, analysis.groups, plan.remove)


@paused_gc()
@walks_tree_once(lambda analysis, *args, **kwargs: analysis.model)
def apply_plan(
    analysis: Analysis, plan: Plan, example_inputs: Any, *, verify: bool = True, tol: float = 1e-4
) -> PruneReport:
    """Slim ``analysis.model`` in place according to ``plan`` and verify it against the masked original.

    Verification runs the model twice: once before slimming, with the removed channels masked out by hooks
    (no copy of the model), and once slimmed. Groups whose removal is approximate (a LayerNorm over the
    channels) cannot match a masked original: the masked pass then masks the exact removals only, the
    model is slimmed by them alone and must match it (``exact_error``), then the approximate removals are
    slimmed too and the slim model's distance from that same output is ``approx_error`` (what they
    change). The FLOPs come from the analysis when it could follow every operand's
    width (:class:`fxprune.targets.PlanCosts`), else they are counted on the verification passes.
    ``report.timings`` gives the seconds of each step.
    """
    model = analysis.model
    was_training = model.training
    set_training(model, False)
    watch = _Stopwatch()
    params_before = count_params(model)
    exact_error = approx_error = None
    approx_groups = [g.id for g in analysis.groups if not g.exact and len(plan.remove.get(g.id, ())) > 0]
    low_precision = promote_to_fp32(model) if verify else {}  # fp16/bf16: verified in fp32, cast back
    example_inputs = cast_inputs(example_inputs, torch.float32) if low_precision else example_inputs
    with watch("flops"):
        costs = PlanCosts(analysis)
        figures = [costs.flops(Plan()), costs.flops(plan)] if costs.fits(example_inputs) else None
    flops = _PassFlops(model, example_inputs, figures)
    staged = verify and bool(approx_groups)  # exact removals slimmed and checked first, then the others
    first = _exact_plan(analysis.groups, plan) if staged else plan
    if verify:
        with watch("masked reference"):
            reference = flops.run(lambda: _masked_output(analysis, first, True, example_inputs))
    else:
        with watch("flops"):
            flops.count()
    check = lambda: _check(analysis, reference, model, example_inputs)  # noqa: E731
    try:
        with watch("slim"):
            changes = slim_model(model, analysis.groups, first, analysis.constants, _orders(analysis, first))
        if verify:
            with watch("verify"):
                exact_error, problems = check() if staged else flops.run(check)
            _raise_if_wrong(exact_error, problems, tol)
        if staged:
            with watch("slim"):
                orders = _orders(analysis, plan)
                cut = set(approx_groups)
                changes.update(slim_model(model, analysis.groups, plan, analysis.constants, orders, cut))
            with watch("verify"):
                approx_error, problems = flops.run(check)
            _raise_if_wrong(exact_error, problems, tol)
    finally:  # the model keeps its dtype even when the slim model fails to run
        restore_dtypes(model, low_precision)
    if not verify:
        with watch("flops"):
            flops.count()
    flops_before, flops_after = flops.figures
    params_after = count_params(model)
    set_training(model, was_training)
    widths = []
    for g in analysis.groups:
        n = len(plan.remove.get(g.id, ()))
        widths.append((g.id, g.modules[0] if g.modules else "", g.width, g.width - n))
    shapes = {n: list(t.shape) for n, t in named_tensors(model, remove_duplicate=True)}
    spec = {name: shapes[name] for name in {c.rpartition("[")[0] for c in changes}}
    report = PruneReport(
        params_before,
        params_after,
        flops_before,
        flops_after,
        widths,
        exact_error,
        approx_error,
        approx_groups,
        analysis.captured.method,
        analysis.seconds,
        watch.seconds["slim"],
        changes,
        spec,
    )
    report.timings = {"analysis": analysis.seconds, **watch.seconds}
    report.warnings = list(dict.fromkeys(flops.notes))
    return report


@paused_gc()
@walks_tree_once(lambda model, *args, **kwargs: model)
def prune(
    model: nn.Module,
    example_inputs: ExampleInputs,
    ratio: float = 0.5,
    *,
    importance: str | Importance = "l2",
    ratios: dict[str, float] | None = None,
    ignore: Iterable[str | type | nn.Module] = (),
    leaf_modules: Iterable[str | type] = (),
    round_to: int | None = None,
    min_width: int = 1,
    global_ranking: bool = False,
    target_flops: float | None = None,
    target_params: float | None = None,
    cost_weight: float = 0.0,
    planner: Planner | None = None,
    verify: bool = True,
    tol: float = 1e-4,
    outputs: OutputSelector | None = None,
) -> PruneReport:
    """Prune ``model`` in place and return a :class:`PruneReport`.

    ``ratio`` is the fraction of channels removed from every group; ``target_flops``/``target_params``
    (fractions of the dense model, e.g. 0.5) choose the ratio instead
    (:func:`fxprune.targets.plan_for_target`; there, with ``global_ranking``, ``cost_weight`` > 0 keeps
    the channels that cost most per channel, e.g. high-resolution layers, and takes more of the cheap ones).
    ``planner`` (a :class:`fxprune.plan.Planner`) makes the plan instead of the ratio settings, e.g.
    ``fxprune.deploy.LatencyPlanner("0.5x", backend="ort")`` for a latency budget
    (``fxprune.deploy.prune(..., target_latency="0.5x")`` is the one-call form). Kept widths are multiples of
    ``round_to``; None is :data:`fxprune.plan.DEFAULT_ROUND_TO` (8: fast on CPU SIMD and GPU tensor cores;
    ``fxprune.deploy.default_round_to`` gives a backend's own multiple), 1 keeps any width. The value used
    is ``report.round_to``.
    The slim model is checked against the original with the removed channels masked out (``verify``;
    relative tolerance ``tol``).
    ``outputs`` picks the interface from the model's output (see :func:`fxprune.analyze`); only those
    tensors keep their width and are compared.
    """
    if planner is not None and (target_flops is not None or target_params is not None):
        raise ValueError("give either planner= or target_flops/target_params, not both")
    if planner is not None and not isinstance(planner, Planner):
        raise TypeError(
            f"planner must have a plan(analysis, example_inputs, importance) method, got {planner!r}"
        )
    sized = target_flops is not None or target_params is not None
    check_cost_weight(cost_weight, sized=sized, global_ranking=global_ranking)
    round_to = resolve_round_to(round_to)
    analysis = analyze(
        model, example_inputs, ignore=ignore, leaf_modules=leaf_modules, outputs=outputs, round_to=round_to
    )
    settings = dict(
        ratios=ratios,
        round_to=round_to,
        min_width=min_width,
        global_ranking=global_ranking,
    )
    if planner is None and target_flops is not None:
        planner = SizeTargetPlanner(target_flops, "flops", **settings, cost_weight=cost_weight)
    elif planner is None and target_params is not None:
        planner = SizeTargetPlanner(target_params, "params", **settings, cost_weight=cost_weight)
    elif planner is None:
        planner = RatioPlanner(ratio, **settings)
    start = time.perf_counter()
    plan = planner.plan(analysis, example_inputs, importance)
    plan_seconds = time.perf_counter() - start
    report = apply_plan(analysis, plan, example_inputs, verify=verify, tol=tol)
    report.round_to = _planned_round_to(planner)
    report.timings = {"analysis": analysis.seconds, "plan": plan_seconds, **report.timings}
    return report


def _planned_round_to(planner: Planner) -> int | None:
    """The channel multiple a planner kept: its ``round_to``, or the one its result reports."""
    result = getattr(planner, "result", None)
    used = getattr(result, "round_to", None) or getattr(planner, "round_to", None)
    return used if isinstance(used, int) else None
