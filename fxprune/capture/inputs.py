"""Normalising the example inputs users pass (a tensor, a tuple, or a dict of keyword arguments)."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from .modules import distinct_modules

ExampleInputs = torch.Tensor | tuple[Any, ...] | list[Any] | Mapping[str, Any]
"""A tensor (one positional input), a tuple/list of positional inputs, or a dict of keyword inputs."""

__all__ = [
    "ExampleInputs",
    "as_args_kwargs",
    "eval_mode",
    "map_tensors",
    "run_model",
    "set_training",
    "tensor_shapes",
]


def as_args_kwargs(example_inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split example inputs into positional and keyword arguments for ``model(*args, **kwargs)``."""
    if isinstance(example_inputs, Mapping):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def map_tensors(example_inputs: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """The example inputs with ``fn`` applied to every tensor, through nested tuples, lists and dicts."""
    if isinstance(example_inputs, torch.Tensor):
        return fn(example_inputs)
    if isinstance(example_inputs, Mapping):
        return {k: map_tensors(v, fn) for k, v in example_inputs.items()}
    if isinstance(example_inputs, (tuple, list)):
        return type(example_inputs)(map_tensors(v, fn) for v in example_inputs)
    return example_inputs


def tensor_shapes(example_inputs: Any) -> list[tuple[int, ...]]:
    """The shape of every tensor in the example inputs, in order (nested tuples, lists, dicts)."""
    shapes: list[tuple[int, ...]] = []
    map_tensors(example_inputs, lambda t: shapes.append(tuple(t.shape)))
    return shapes


def run_model(model: nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` on the example inputs."""
    args, kwargs = as_args_kwargs(example_inputs)
    return model(*args, **kwargs)


def set_training(model: nn.Module, training: bool) -> None:
    """``model.train(training)``, skipped when every module already has that mode (a walk over the flags
    costs a fraction of the ``train`` call per module)."""
    if any(m.training != training for m in distinct_modules(model)):
        model.train(training)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put every submodule in eval mode and restore each one's own ``training`` flag afterwards."""
    modes = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, training in modes:
            module.training = training
