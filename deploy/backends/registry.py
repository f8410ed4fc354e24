"""Latency backends by name: ``get_backend("ort")``."""

from __future__ import annotations

from collections.abc import Callable

from .base import Backend

__all__ = ["get_backend", "list_backends", "register_backend"]

_BACKENDS: dict[str, type[Backend]] = {}


def register_backend(cls: type[Backend]) -> type[Backend]:
    """Class decorator registering a :class:`Backend` under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    if cls.name in _BACKENDS and _BACKENDS[cls.name] is not cls:
        raise ValueError(f"backend {cls.name!r} is already registered")
    _BACKENDS[cls.name] = cls
    return cls


def _populate() -> None:
    from . import openvino, ort, ort_cuda, tensorrt, torch_backend, trtexec  # noqa: F401


def get_backend(name: str | Backend, **options) -> Backend:
    """The backend named ``name`` (``ort``, ``openvino``, ``trt``, ``ort-cuda``, ``torch``, ...)."""
    if isinstance(name, Backend):
        return name
    _populate()
    cls: Callable[..., Backend] | None = _BACKENDS.get(name)
    if cls is None:
        raise ValueError(f"unknown backend {name!r}; known backends: {', '.join(list_backends())}")
    return cls(**options)


def list_backends() -> list[str]:
    """Names of all registered backends."""
    _populate()
    return sorted(_BACKENDS)
