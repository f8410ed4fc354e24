"""Normalising the example inputs users pass (a tensor, a tuple, or a dict of keyword arguments)."""

from __future__ import annotations

from typing import Any

import torch

ExampleInputs = Any


def as_args_kwargs(example_inputs: ExampleInputs) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """Split example inputs into positional and keyword arguments for ``model(*args, **kwargs)``."""
    if isinstance(example_inputs, dict):
        return (), dict(example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return tuple(example_inputs), {}
    return (example_inputs,), {}


def run_model(model: torch.nn.Module, example_inputs: ExampleInputs) -> Any:
    """Call ``model`` on the example inputs."""
    args, kwargs = as_args_kwargs(example_inputs)
    return model(*args, **kwargs)
