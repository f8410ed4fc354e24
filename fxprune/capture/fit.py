"""Example inputs that do not fit the model: one clear error naming what the model expects."""

from __future__ import annotations

from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .inputs import ExampleInputs, as_args_kwargs, eval_mode, run_model
from .modules import named_tensors

__all__ = ["InputMismatchError", "check_inputs_fit", "describe_inputs", "first_layer", "match_parameters"]

_INPUT_SIZE_ATTRS = ("in_channels", "in_features", "num_embeddings", "normalized_shape", "embed_dim")


class InputMismatchError(ValueError):
    """The model cannot run on the example inputs given to fxprune."""


def describe_inputs(example_inputs: ExampleInputs) -> str:
    """``tensor [1, 1, 64, 64] float32 on cpu`` for every positional and keyword input."""

    def one(v: Any) -> str:
        if isinstance(v, torch.Tensor):
            return f"tensor {list(v.shape)} {str(v.dtype).removeprefix('torch.')} on {v.device}"
        return type(v).__name__

    args, kwargs = as_args_kwargs(example_inputs)
    return ", ".join([one(a) for a in args] + [f"{k}={one(v)}" for k, v in kwargs.items()]) or "nothing"


def first_layer(model: nn.Module, graph_module: fx.GraphModule | None = None) -> str | None:
    """``'conv1' (Conv2d: in_channels=3, float32 on cpu)``: the first layer that sizes its input."""
    order = [n.target for n in graph_module.graph.nodes if n.op == "call_module"] if graph_module else []
    order += [n for n, _ in model.named_modules()]
    for name in order:
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        sizes = [f"{a}={getattr(m, a)}" for a in _INPUT_SIZE_ATTRS if isinstance(getattr(m, a, None), int)]
        if sizes:
            p = next(m.parameters(), None)
            where = f", {str(p.dtype).removeprefix('torch.')} on {p.device}" if p is not None else ""
            return f"{name!r} ({type(m).__name__}: {', '.join(sizes)}{where})"
    return None


def match_parameters(model: nn.Module, example_inputs: ExampleInputs) -> bool:
    """False when a floating input has a dtype, or an input a device, that no parameter of ``model`` has.

    Shape-only analysis does not catch those; a model that converts its inputs itself is fine, so a
    mismatch here is only a reason to run :func:`check_inputs_fit`.
    """
    params = [p for _, p in named_tensors(model, buffers=False, remove_duplicate=True)]
    dtypes = {p.dtype for p in params if p.is_floating_point()}
    devices = {p.device for p in params}
    args, kwargs = as_args_kwargs(example_inputs)
    for v in [*args, *kwargs.values()]:
        if not isinstance(v, torch.Tensor):
            continue
        if dtypes and v.is_floating_point() and v.dtype not in dtypes:
            return False
        if devices and v.device not in devices:
            return False
    return True


def check_inputs_fit(
    model: nn.Module, example_inputs: ExampleInputs, graph_module: fx.GraphModule | None = None
) -> None:
    """Raise :class:`InputMismatchError` if ``model`` fails to run on ``example_inputs``; else return."""
    try:
        with eval_mode(model), torch.no_grad():
            run_model(model, example_inputs)
    except Exception as e:
        layer = first_layer(model, graph_module)
        expects = f"; its first layer {layer} sets what it expects" if layer else ""
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputMismatchError(
            f"the example inputs do not fit the model: it fails on {describe_inputs(example_inputs)} "
            f"({type(e).__name__}: {reason}){expects}. Pass inputs the model runs on, e.g. the shape, "
            "dtype and device it is used with"
        ) from e
