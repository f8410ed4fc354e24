"""Latency backends, one interface: load a model once, time calls of it (see ``runtime_latency``)."""

from .base import Backend, BackendUnavailable, Runner, Settings
from .registry import get_backend, list_backends, register_backend

__all__ = [
    "Backend",
    "BackendUnavailable",
    "Runner",
    "Settings",
    "get_backend",
    "list_backends",
    "register_backend",
]
