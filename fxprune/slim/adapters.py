"""Keep layer attributes (in/out channels, num_features, groups, ...) consistent with sliced weights."""

from __future__ import annotations

from collections.abc import Callable

from torch import nn

Adapter = Callable[[nn.Module, dict], None]
_ADAPTERS: dict[type, Adapter] = {}

__all__ = ["fix_attributes", "register_adapter", "write_constant"]


def register_adapter(cls: type) -> Callable[[Adapter], Adapter]:
    """Register ``fn(module, before)`` run after a module of type ``cls`` had tensors sliced.

    ``before`` holds the module's attributes as they were (for example ``{"groups": 32}``); use it for
    custom layers that keep channel counts in Python attributes.
    """

    def deco(fn: Adapter) -> Adapter:
        _ADAPTERS[cls] = fn
        return fn

    return deco


@register_adapter(nn.modules.conv._ConvNd)
def _conv(m: nn.Module, before: dict) -> None:
    w = m.weight
    if m.transposed:
        m.in_channels = w.shape[0]
        m.out_channels = w.shape[1] * m.groups
        return
    old_groups, old_in, old_out = before["groups"], before["in_channels"], before["out_channels"]
    if old_groups > 1 and old_in == old_groups and w.shape[1] == 1:  # depthwise
        mult = old_out // old_groups
        m.groups = w.shape[0] // mult
        m.in_channels = m.groups
    else:
        m.in_channels = w.shape[1] * m.groups
    m.out_channels = w.shape[0]


@register_adapter(nn.Linear)
def _linear(m: nn.Module, before: dict) -> None:
    m.out_features, m.in_features = m.weight.shape


@register_adapter(nn.modules.batchnorm._NormBase)
def _norm(m: nn.Module, before: dict) -> None:
    t = m.weight if m.weight is not None else m.running_mean
    if t is not None:
        m.num_features = t.shape[0]


@register_adapter(nn.LayerNorm)
def _layer_norm(m: nn.Module, before: dict) -> None:
    if m.weight is not None:
        m.normalized_shape = (m.weight.shape[0],)


@register_adapter(nn.GroupNorm)
def _group_norm(m: nn.Module, before: dict) -> None:
    if m.weight is not None:
        m.num_channels = m.weight.shape[0]


@register_adapter(nn.MultiheadAttention)
def _multihead_attention(m: nn.Module, before: dict) -> None:
    head_dim = before["embed_dim"] // before["num_heads"]
    m.embed_dim = m.kdim = m.vdim = m.in_proj_weight.shape[1]
    m.num_heads = m.embed_dim // head_dim
    m.head_dim = head_dim


@register_adapter(nn.Embedding)
def _embedding(m: nn.Module, before: dict) -> None:
    m.embedding_dim = m.weight.shape[1]


@register_adapter(nn.PReLU)
def _prelu(m: nn.Module, before: dict) -> None:
    m.num_parameters = m.weight.numel()


def snapshot(m: nn.Module) -> dict:
    """The Python attributes an adapter may need after slicing."""
    keys = (
        "groups",
        "in_channels",
        "out_channels",
        "in_features",
        "out_features",
        "num_features",
        "embed_dim",
        "num_heads",
    )
    own, cls = m.__dict__, type(m)  # instance attributes first: hasattr raises inside Module.__getattr__
    return {
        k: own[k] if k in own else getattr(m, k)
        for k in keys
        if k in own or hasattr(cls, k) or k in m._parameters or k in m._buffers or k in m._modules
    }


def fix_attributes(m: nn.Module, before: dict) -> None:
    """Run the adapter registered for ``m``'s class (most specific first)."""
    for cls in type(m).__mro__:
        fn = _ADAPTERS.get(cls)
        if fn is not None:
            fn(m, before)
            return


def write_constant(model: nn.Module, module: str, attr: str, value: int) -> None:
    """Set the channel count ``module.attr`` to ``value``; ``attr`` may name a list element (``splits[1]``).

    A list or tuple attribute keeps its type (a new object: other holders of the old one are untouched).
    """
    owner = model.get_submodule(module)
    name, _, index = attr.partition("[")
    if not index:
        setattr(owner, attr, value)
        return
    seq = getattr(owner, name)
    i = int(index.rstrip("]"))
    items = list(seq)
    items[i] = value
    setattr(owner, name, type(seq)(items) if isinstance(seq, tuple) else items)
