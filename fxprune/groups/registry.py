"""Which handler runs for which op or leaf module, and how to add one.

A handler computes the channel labels of an op's output from those of its inputs (and couples or freezes
slots on the way). The families live in their own modules (``elementwise``, ``reshape``, ``layers``...)
and register their handlers where they define them, with :func:`handles_ops` and :func:`handles_modules`;
``fxprune.groups`` imports every family once, so the tables are complete whenever the package is used.

Example, a custom op that keeps every channel where it is::

    from fxprune.groups.registry import register_op_handler
    from fxprune.groups.elementwise import passthrough

    register_op_handler("my_activation", passthrough)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Any, TypeVar

from torch import nn

from .context import OpContext

Handler = Callable[[OpContext], Any]
ModuleHandler = Callable[[OpContext, nn.Module], Any]
F = TypeVar("F", bound=Callable)

__all__ = [
    "Handler",
    "LayerArgs",
    "ModuleHandler",
    "function_handler",
    "handles_modules",
    "handles_ops",
    "layer_args",
    "module_classes_in",
    "module_handler",
    "register_module_handler",
    "register_op_handler",
    "unknown",
]


@dataclass(frozen=True)
class LayerArgs:
    """Where a functional layer op takes its parameter and its input, as positions in an aten graph.

    In an exported graph the module owning ``args[weight]`` is the layer the op stands for; the labels
    from ``args[input]`` on are what that module receives when called.
    """

    weight: int = 1
    input: int = 0


_OP_HANDLERS: dict[str, Handler] = {}
_MODULE_HANDLERS: dict[type, ModuleHandler] = {}
_LAYER_ARGS: dict[str, LayerArgs] = {}


def register_op_handler(name: str, handler: Handler, layer: LayerArgs | None = None) -> None:
    """Register ``handler`` for functions/methods/aten ops whose normalised name is ``name``.

    ``layer`` marks an op that applies a module's parameters (a functional conv); see :class:`LayerArgs`.
    """
    _OP_HANDLERS[name] = handler
    if layer is not None:
        _LAYER_ARGS[name] = layer
    else:
        _LAYER_ARGS.pop(name, None)


def register_module_handler(cls: type, handler: ModuleHandler) -> None:
    """Register ``handler(ctx, module)`` for leaf modules of type ``cls`` (and subclasses)."""
    _MODULE_HANDLERS[cls] = handler


def handles_ops(*names: str, layer: LayerArgs | None = None) -> Callable[[F], F]:
    """Decorator: register the function as the handler of the op ``names``."""

    def register(handler: F) -> F:
        for name in names:
            register_op_handler(name, handler, layer)
        return handler

    return register


def handles_modules(*classes: type) -> Callable[[F], F]:
    """Decorator: register the function as the handler of leaf modules of the types ``classes``."""

    def register(handler: F) -> F:
        for cls in classes:
            register_module_handler(cls, handler)
        return handler

    return register


def function_handler(name: str) -> Handler | None:
    """The handler of a normalised op name, if any."""
    return _OP_HANDLERS.get(name)


def module_handler(m: nn.Module) -> ModuleHandler | None:
    """The handler for a leaf module, looked up along its class hierarchy."""
    for cls in type(m).__mro__:
        handler = _MODULE_HANDLERS.get(cls)
        if handler is not None:
            return handler
    return None


def layer_args(name: str) -> LayerArgs | None:
    """Argument positions of a functional layer op (conv, linear, norms, embedding), else None."""
    return _LAYER_ARGS.get(name)


def module_classes_in(module: ModuleType) -> list[type]:
    """The ``nn.Module`` classes defined in the Python module ``module`` (torch.nn.modules.pooling...)."""
    return [
        c
        for c in vars(module).values()
        if isinstance(c, type) and issubclass(c, nn.Module) and c.__module__ == module.__name__
    ]


def unknown(ctx: OpContext) -> Any:
    """Ops without a handler: the channels they touch freeze (ops on sizes alone go unreported)."""
    return ctx.unsupported_op("op not understood by the channel analysis")
