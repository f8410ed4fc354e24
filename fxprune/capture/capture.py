"""Capture a model as a torch.fx graph: symbolic tracing first, torch.export as the fallback."""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

import torch
import torch.fx as fx
from torch import nn

from .errors import capture_error
from .inputs import ExampleInputs, as_args_kwargs, run_model, set_training
from .tracer import LeafTracer

__all__ = ["Captured", "capture"]


@dataclass
class Captured:
    """A captured graph and how it was obtained.

    ``method`` is ``"fx"`` (symbolic trace of the eval-mode model), ``"fx-train"`` (symbolic trace
    taken with ``model.train()``: inference-only Python control flow, e.g. ultralytics heads, is
    skipped; channel structure is the same), ``"fx-inputs"`` (symbolic trace in which Python control
    flow on sizes took the branch of the example inputs, see :class:`LeafTracer`) or ``"export"``
    (``torch.export``, aten-level graph whose parameters are ``get_attr`` nodes named by their
    qualified names).
    """

    graph_module: fx.GraphModule
    method: str
    notes: list[str] = field(default_factory=list)


@contextlib.contextmanager
def _mode(model: nn.Module, training: bool):
    was = model.training
    set_training(model, training)
    try:
        yield
    finally:
        set_training(model, was)


def _symbolic(model: nn.Module, leaf_modules: Iterable) -> fx.GraphModule:
    tracer = LeafTracer(leaf_modules)
    try:
        return tracer.trace_module(model)
    except Exception as e:
        e.fxprune_module = tracer.scope_stack[-1] if tracer.scope_stack else None  # type: ignore[attr-defined]
        raise


def _symbolic_on_inputs(
    model: nn.Module, leaf_modules: Iterable, example_inputs: ExampleInputs
) -> fx.GraphModule:
    """Symbolic trace where control flow on sizes reads them from the example inputs; tried again after
    one run of the model when it fails (a cache its forward fills on the first call, as ConViT's)."""
    try:
        return LeafTracer(leaf_modules, example_inputs).trace_module(model)
    except Exception:
        with torch.no_grad():
            run_model(model, example_inputs)
        return LeafTracer(leaf_modules, example_inputs).trace_module(model)


@contextlib.contextmanager
def _quiet_torch_logs():
    """torch.export logs whole graphs when it fails; the CaptureError says what matters."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith("torch")]
    loggers = [logging.getLogger(n) for n in ["torch", *names]]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _export(model: nn.Module, example_inputs: ExampleInputs) -> fx.GraphModule:
    args, kwargs = as_args_kwargs(example_inputs)
    with _quiet_torch_logs():
        ep = torch.export.export(model, args, kwargs, strict=False)
    return ep.module()


def capture(
    model: nn.Module,
    example_inputs: ExampleInputs,
    leaf_modules: Iterable[type | str] = (),
    use_export: bool = True,
) -> Captured:
    """Capture ``model`` as an fx graph.

    Tries, in order: symbolic tracing in eval mode, symbolic tracing in training mode, symbolic tracing
    with sizes read from the example inputs where control flow needs them, and (when
    ``use_export``) ``torch.export.export(strict=False)``. Raises :class:`CaptureError` naming the
    module and op that blocked tracing when all fail.
    """
    leaf_modules = list(leaf_modules)
    notes: list[str] = []
    try:
        with _mode(model, False):
            return Captured(_symbolic(model, leaf_modules), "fx")
    except Exception as e:
        fx_error = e
        notes.append(f"symbolic trace (eval): {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    try:
        with _mode(model, True):
            gm = _symbolic(model, leaf_modules)
        notes.append("captured with model.train(): inference-only control flow is not in the graph")
        return Captured(gm, "fx-train", notes)
    except Exception as e:
        notes.append(f"symbolic trace (train): {type(e).__name__}")
    try:
        with _mode(model, False):
            gm = _symbolic_on_inputs(model, leaf_modules, example_inputs)
        notes.append("control flow on sizes took the branch of the example inputs")
        return Captured(gm, "fx-inputs", notes)
    except Exception as e:
        notes.append(f"symbolic trace on the example inputs' sizes: {type(e).__name__}")
    export_error = None
    if use_export:
        try:
            with _mode(model, False), torch.no_grad():
                gm = _export(model, example_inputs)
            return Captured(gm, "export", notes)
        except Exception as e:
            export_error = e
    raise capture_error(
        model, fx_error, getattr(fx_error, "fxprune_module", None), export_error
    ) from fx_error
