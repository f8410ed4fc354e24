"""Linear over-parameterization: a compact layer as three consecutive linear layers, and back.

``expand`` replaces a conv ``W`` (O x I x k x k, ``groups=1``) by 1x1 ``A`` (I -> e_in), k x k ``B``
(e_in -> e_out, the original stride, padding and dilation) and 1x1 ``C`` (e_out -> O, the original bias),
and a linear layer by three linear layers the same way. ``A`` has orthonormal columns, ``C`` orthonormal
rows and ``B = C^T W A^T`` per kernel tap, so ``C B A = W``: the expanded model computes the same function
and every new parameter receives a gradient. ``merge`` multiplies the factors back into the original
shapes. Norm layers stay outside the blocks.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Iterable

import torch
from torch import nn

__all__ = ["ExpandedConv2d", "ExpandedLinear", "expand", "merge"]


def _orthonormal_columns(rows: int, cols: int, generator: torch.Generator | None) -> torch.Tensor:
    """A ``rows x cols`` matrix (rows >= cols) whose columns are orthonormal."""
    q, r = torch.linalg.qr(torch.randn(rows, cols, generator=generator, dtype=torch.float64))
    return q * torch.sign(torch.diagonal(r))[None, :]


def _width(n: int, factor: float) -> int:
    return max(n, int(math.ceil(n * factor)))


class ExpandedConv2d(nn.Module):
    """``c(b(a(x)))``: 1x1 -> k x k -> 1x1 convolutions equal to one compact conv."""

    def __init__(self, conv: nn.Conv2d, factor: float = 2.0, generator: torch.Generator | None = None):
        super().__init__()
        w = conv.weight.detach().double().cpu()
        out_ch, in_ch = w.shape[:2]
        e_in, e_out = _width(in_ch, factor), _width(out_ch, factor)
        a = _orthonormal_columns(e_in, in_ch, generator)  # e_in x I
        c = _orthonormal_columns(e_out, out_ch, generator).t()  # O x e_out
        b = torch.einsum("po,oiuv,qi->pquv", c.t(), w, a)  # C^T W A^T per tap
        kw = dict(device=conv.weight.device, dtype=conv.weight.dtype)
        self.a = nn.Conv2d(in_ch, e_in, 1, bias=False, **kw)
        self.b = nn.Conv2d(
            e_in, e_out, conv.kernel_size, conv.stride, conv.padding, conv.dilation, bias=False, **kw
        )
        self.c = nn.Conv2d(e_out, out_ch, 1, bias=conv.bias is not None, **kw)
        with torch.no_grad():
            self.a.weight.copy_(a[:, :, None, None])
            self.b.weight.copy_(b)
            self.c.weight.copy_(c[:, :, None, None])
            if conv.bias is not None:
                self.c.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))

    @torch.no_grad()
    def merged(self) -> nn.Conv2d:
        """The compact conv equal to this block."""
        b = self.b
        c, a = self.c.weight[:, :, 0, 0].double(), self.a.weight[:, :, 0, 0].double()
        w = torch.einsum("op,pquv,qi->oiuv", c, b.weight.double(), a).to(b.weight.dtype)
        conv = nn.Conv2d(
            w.shape[1], w.shape[0], b.kernel_size, b.stride, b.padding, b.dilation,
            bias=self.c.bias is not None, device=w.device, dtype=w.dtype,
        )  # fmt: skip
        conv.weight.copy_(w)
        if self.c.bias is not None:
            conv.bias.copy_(self.c.bias)
        return conv


class ExpandedLinear(nn.Module):
    """``c(b(a(x)))``: three linear layers equal to one."""

    def __init__(self, linear: nn.Linear, factor: float = 2.0, generator: torch.Generator | None = None):
        super().__init__()
        w = linear.weight.detach().double().cpu()
        out_f, in_f = w.shape
        e_in, e_out = _width(in_f, factor), _width(out_f, factor)
        a = _orthonormal_columns(e_in, in_f, generator)
        c = _orthonormal_columns(e_out, out_f, generator).t()
        kw = dict(device=linear.weight.device, dtype=linear.weight.dtype)
        self.a = nn.Linear(in_f, e_in, bias=False, **kw)
        self.b = nn.Linear(e_in, e_out, bias=False, **kw)
        self.c = nn.Linear(e_out, out_f, bias=linear.bias is not None, **kw)
        with torch.no_grad():
            self.a.weight.copy_(a)
            self.b.weight.copy_(c.t() @ w @ a.t())
            self.c.weight.copy_(c)
            if linear.bias is not None:
                self.c.bias.copy_(linear.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c(self.b(self.a(x)))

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The compact linear layer equal to this block."""
        w = self.c.weight.double() @ self.b.weight.double() @ self.a.weight.double()
        w = w.to(self.b.weight.dtype)
        layer = nn.Linear(
            w.shape[1], w.shape[0], bias=self.c.bias is not None, device=w.device, dtype=w.dtype
        )
        layer.weight.copy_(w)
        if self.c.bias is not None:
            layer.bias.copy_(self.c.bias)
        return layer


def _expandable(module: nn.Module) -> bool:
    if type(module) is nn.Linear:
        return True
    return type(module) is nn.Conv2d and module.groups == 1 and module.padding_mode == "zeros"


def _set(model: nn.Module, name: str, module: nn.Module) -> None:
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, attr, module)


def expand(
    model: nn.Module, factor: float = 2.0, *, exclude: Iterable[str] = (), seed: int | None = 0
) -> list[str]:
    """Replace in place every ``groups=1`` Conv2d and every Linear of ``model`` by an expanded block.

    ``factor``: the blocks' inner widths relative to the layer's (>= 1). ``exclude``: module-name globs
    left as they are. Depthwise and grouped convs stay. Returns the names of the expanded layers (create
    the optimizer afterwards: the parameters changed).
    """
    if not factor >= 1.0:
        raise ValueError(f"factor must be >= 1 (the expansion width relative to the layer's), got {factor}")
    if isinstance(model, (nn.Conv2d, nn.Linear)):
        raise TypeError("expand works on a model containing layers: wrap a single layer in nn.Sequential")
    exclude = list(exclude)
    gen = torch.Generator().manual_seed(seed) if seed is not None else None
    inside = [n + "." for n, m in model.named_modules() if isinstance(m, (ExpandedConv2d, ExpandedLinear))]
    names = [
        n
        for n, m in model.named_modules()
        if n
        and _expandable(m)
        and not any(n.startswith(p) for p in inside)
        and not any(fnmatch.fnmatchcase(n, p) for p in exclude)
    ]
    for name in names:
        layer = model.get_submodule(name)
        cls = ExpandedConv2d if isinstance(layer, nn.Conv2d) else ExpandedLinear
        block = cls(layer, factor, gen)
        block.train(layer.training)
        _set(model, name, block)
    return names


def merge(model: nn.Module) -> list[str]:
    """Replace in place every expanded block by the compact layer it equals; returns their names."""
    names = [n for n, m in model.named_modules() if isinstance(m, (ExpandedConv2d, ExpandedLinear))]
    for name in names:
        block = model.get_submodule(name)
        layer = block.merged()
        layer.train(block.training)
        _set(model, name, layer)
    return names
