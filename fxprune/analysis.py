"""``fxprune.analyze``: capture a model and discover its channel groups."""

from __future__ import annotations

import fnmatch
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .capture import Captured, as_args_kwargs, capture
from .capture.fit import check_inputs_fit, match_parameters
from .capture.inputs import ExampleInputs, set_training
from .capture.modules import named_modules, walks_tree_once
from .capture.outputs import OutputSelector, select_outputs
from .gc_pause import paused_gc
from .groups.attr_constants import check_shared_attributes
from .groups.channel_constants import ChannelConstant
from .groups.context import Unsupported
from .groups.grouped_conv import shaped_for
from .groups.grouping import Group, build_groups, matches_module
from .groups.head_choice import forget_head_sizes, retry_whole_heads
from .groups.literals import freeze_attribute_literals
from .groups.propagate import PropagationResult, propagate_shapes
from .groups.sdpa_scale import scale_folds
from .importance import get_importance
from .importance.parameters import parameter_table
from .importance.registry import Importance
from .plan import Plan, make_plan, resolve_round_to
from .threads import one_thread

__all__ = ["Analysis", "analyze"]


@dataclass
class Analysis:
    """The channel groups of a model and how they were found."""

    model: nn.Module
    captured: Captured
    propagation: PropagationResult
    groups: list[Group]
    unsupported: list[Unsupported]
    seconds: float
    ignored: list[str] = field(default_factory=list)
    constants: list[ChannelConstant] = field(default_factory=list)
    outputs: OutputSelector | None = None  # picks the interface from the model's output (None: all of it)

    @property
    def prunable_groups(self) -> list[Group]:
        return [g for g in self.groups if g.prunable > 0]

    def scores(self, importance="l2") -> dict[int, np.ndarray]:
        """Importance of every atom of every group (``"l1"``, ``"l2"``, ``"random"`` or a callable)."""
        fn = get_importance(importance)
        with one_thread(), parameter_table(self.model):
            return {g.id: np.asarray(fn(self.model, g), dtype=np.float64) for g in self.groups}

    def plan(
        self,
        ratio: float,
        *,
        importance: str | Importance = "l2",
        ratios: dict[str, float] | None = None,
        round_to: int | None = None,
        min_width: int = 1,
        global_ranking: bool = False,
    ) -> Plan:
        """Choose the atoms to remove (see :func:`fxprune.plan.make_plan`; ``round_to`` None:
        :data:`fxprune.plan.DEFAULT_ROUND_TO`, 1 keeps any width)."""
        self.check_ratio_patterns(ratios)
        round_to = resolve_round_to(round_to)
        return make_plan(
            self.groups, self.scores(importance), ratio, ratios, round_to, min_width, global_ranking
        )

    def check_ratio_patterns(self, ratios: dict[str, float] | None) -> None:
        """Raise ``ValueError`` if a per-module ratio pattern matches no module, or only frozen channels."""
        if not ratios:
            return
        names = [n for n, _ in self.model.named_modules()]
        for pattern in ratios or {}:
            if not any(fnmatch.fnmatchcase(n, pattern) for n in names):
                raise ValueError(f"per-module ratio pattern {pattern!r} matches no module of the model")
            hit = [g for g in self.groups if any(fnmatch.fnmatchcase(m, pattern) for m in g.modules)]
            if hit and all(g.prunable == 0 for g in hit):
                reasons = {r for g in hit for r in g.frozen.values()}
                raise ValueError(
                    f"per-module ratio {pattern!r}: every channel of the matching layers is frozen "
                    f"({'; '.join(sorted(reasons)[:3])})"
                )

    def summary_rows(self) -> list[dict]:
        """One dict per group: id, modules, width, prunable, constraints, exact."""
        rows = []
        for g in self.groups:
            cons = []
            if g.divisor > 1:
                cons.append(f"divisor {g.divisor}")
            if g.equal_parts:
                cons.append(f"equal parts x{len(g.equal_parts[0])}")
            reasons = sorted(set(g.frozen.values()))
            rows.append(
                {
                    "group": g.id,
                    "modules": g.modules,
                    "members": g.members(),
                    "width": g.width,
                    "prunable": g.prunable,
                    "constraints": ", ".join(cons),
                    "exact": g.exact,
                    "note": g.approx_reason or (reasons[0] if reasons else ""),
                }
            )
        return rows


def _check_ignore(model: nn.Module, ignore: Iterable) -> tuple[list[str], list[type]]:
    patterns, types = [], []
    ignore = list(ignore)
    names = [n for n, _ in model.named_modules()] if ignore else []
    for item in ignore:
        if isinstance(item, type):
            types.append(item)
            continue
        if isinstance(item, nn.Module):
            found = [n for n, m in model.named_modules() if m is item]
            if not found:
                raise ValueError("an ignored module object is not part of the model")
            patterns.append(found[0])
            continue
        if not any(matches_module(n, [item]) for n in names):
            raise ValueError(f"ignored module pattern {item!r} matches no module of the model")
        patterns.append(item)
    return patterns, types


@paused_gc()
@walks_tree_once(lambda model, *args, **kwargs: model)
def analyze(
    model: nn.Module,
    example_inputs: ExampleInputs,
    *,
    ignore: Iterable[str | type | nn.Module] = (),
    leaf_modules: Iterable[str | type] = (),
    use_export: bool = True,
    outputs: OutputSelector | None = None,
    round_to: int | None = None,
) -> Analysis:
    """Capture ``model`` and discover its coupled channel groups.

    ``ignore``: module names (glob patterns), module objects or types whose channels must not change.
    ``leaf_modules``: module types or name patterns that tracing must not enter (their channels freeze).
    Model outputs never change shape; ops the analysis does not understand freeze the channels they touch
    and are listed in ``Analysis.unsupported`` (so does a custom ``torch.autograd.Function``: its
    ``forward`` is not looked into). ``outputs`` maps the model's output (as the captured graph returns it)
    to the tensors that are its interface; the other outputs may change width (for example feature maps
    returned only for their sizes). Example inputs the model cannot run on raise
    :class:`fxprune.InputMismatchError` (a ``ValueError``) naming its first layer.
    ``round_to``: the channel multiple plans will keep (None: the default, 8); a grouped conv whose
    groups would not keep aligned widths position by position loses whole groups instead
    (:mod:`fxprune.groups.grouped_conv`).
    """
    start = time.perf_counter()
    patterns, types = _check_ignore(model, ignore)
    if types:
        patterns += [n for n, m in model.named_modules() if isinstance(m, tuple(types))]
    if not match_parameters(model, example_inputs):
        check_inputs_fit(model, example_inputs)  # a dtype or device the shape-only analysis would miss
    was_training = model.training
    set_training(model, False)
    try:
        with one_thread():
            captured = capture(model, example_inputs, leaf_modules, use_export)
            if outputs is not None:
                select_outputs(captured, outputs, example_inputs)
            try:
                with shaped_for(round_to):
                    prop = _propagate(captured, example_inputs, model)
            except Exception:
                check_inputs_fit(model, example_inputs, captured.graph_module)  # names a misfit input
                raise
            check_shared_attributes(prop)
            if captured.method != "export":
                freeze_attribute_literals(prop, captured.graph_module, model)
    finally:
        set_training(model, was_training)
    groups, unsupported = build_groups(prop, model)
    modules = named_modules(model)
    for g in groups:
        if patterns:
            g.freeze_modules(patterns, "ignored by the user")
        for name in g.modules:
            m = modules.get(name)
            if m is not None and any(not p.requires_grad for p in m.parameters(recurse=False)):
                g.freeze_modules([name], "frozen parameters (requires_grad=False)")
    constants = [ChannelConstant(m, a, prop.table.roots(lab)) for m, a, lab in prop.constants]
    constants += scale_folds(prop)  # sdpa calls without scale= whose head size may shrink
    return Analysis(
        model, captured, prop, groups, unsupported, time.perf_counter() - start, patterns, constants, outputs
    )


def _propagate(captured: Captured, example_inputs, model: nn.Module) -> PropagationResult:
    """Run channel propagation on shapes only (meta, else fake tensors); fall back to real ones.

    Views that followed a head size which then froze follow whole heads on a second run
    (:func:`fxprune.groups.head_choice.retry_whole_heads`)."""
    args, kwargs = as_args_kwargs(example_inputs)
    gm, export = captured.graph_module, captured.method == "export"
    prop = propagate_shapes(gm, export, model, args, kwargs)
    if retry_whole_heads(gm.graph, prop.table):
        prop = propagate_shapes(gm, export, model, args, kwargs)
    forget_head_sizes(gm.graph)
    return prop

