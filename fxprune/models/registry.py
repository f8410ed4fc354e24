"""Name -> factory registry for the model zoo, with a default example-input shape per model."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from torch import nn

__all__ = ["create_model", "default_input_shape", "list_models", "name_of_factory", "register_model"]

F = TypeVar("F", bound=Callable[..., nn.Module])


@dataclass(frozen=True)
class _Entry:
    factory: Callable[..., nn.Module]
    input_shape: tuple[int, ...]


_REGISTRY: dict[str, _Entry] = {}


def register_model(name: str, input_shape: tuple[int, ...] = (1, 3, 224, 224)) -> Callable[[F], F]:
    """Decorator registering a model factory under ``name`` with its default example-input shape."""

    def decorator(factory: F) -> F:
        if name in _REGISTRY and _REGISTRY[name].factory is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _REGISTRY[name] = _Entry(factory, tuple(input_shape))
        return factory

    return decorator


def _populate() -> None:
    # Importing the package registers the built-in zoo.
    import fxprune.models  # noqa: F401


def _entry(name: str) -> _Entry:
    _populate()
    if name not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; registered models: {', '.join(list_models())}")
    return _REGISTRY[name]


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered model ``name``, passing ``kwargs`` to its factory."""
    return _entry(name).factory(**kwargs)


def default_input_shape(name: str) -> tuple[int, ...]:
    """Default example-input shape (batch 1) of the registered model ``name``."""
    return _entry(name).input_shape


def list_models() -> list[str]:
    """Sorted names of all registered models."""
    _populate()
    return sorted(_REGISTRY)


def name_of_factory(factory: object) -> str | None:
    """Registered name of ``factory``, or None when it is not a registered factory."""
    _populate()
    return next((name for name, entry in _REGISTRY.items() if entry.factory is factory), None)
