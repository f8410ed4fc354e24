"""Channel counts that known modules keep in Python attributes and write as constants in forward().

torchvision's ``VisionTransformer`` reshapes its patch embedding with ``self.hidden_dim``: a constant
in the traced graph. A registered attribute lets the analysis treat that constant as the width of the
channel dim it sizes; slimming then sets the attribute to the new width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from torch import nn

__all__ = ["ChannelConstant", "find_constant", "register_channel_constant"]

_CONSTANTS: dict[str, tuple[str, ...]] = {
    "torchvision.models.vision_transformer.VisionTransformer": ("hidden_dim",),
}


def register_channel_constant(cls: type | str, *attrs: str) -> None:
    """Declare that ``cls`` instances write ``attrs`` (channel counts) as constants in forward()."""
    key = cls if isinstance(cls, str) else f"{cls.__module__}.{cls.__qualname__}"
    _CONSTANTS[key] = tuple(dict.fromkeys(_CONSTANTS.get(key, ()) + attrs))


@dataclass
class ChannelConstant:
    """``module.attr`` must equal the number of kept channels among ``roots`` after slimming."""

    module: str
    attr: str
    roots: np.ndarray = field(repr=False)


def _registered(m: nn.Module) -> tuple[str, ...]:
    for cls in type(m).__mro__:
        attrs = _CONSTANTS.get(f"{cls.__module__}.{cls.__qualname__}")
        if attrs:
            return attrs
    return ()


def find_constant(model: nn.Module | None, scope: str, value: int) -> tuple[str, str] | None:
    """The registered ``(module name, attribute)`` equal to ``value`` in ``scope`` or its parents."""
    if model is None:
        return None
    parts = scope.split(".") if scope else []
    for k in range(len(parts), -1, -1):
        name = ".".join(parts[:k])
        try:
            m = model.get_submodule(name)
        except AttributeError:
            continue
        for attr in _registered(m):
            if getattr(m, attr, None) == value:
                return name, attr
    return None
