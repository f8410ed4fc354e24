"""What an op handler sees: the node, its argument values and labels, and the slot table."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx as fx
from torch import nn

from .labels import Labels
from .slots import SlotTable

__all__ = ["OpContext", "Unsupported"]


@dataclass
class Unsupported:
    """An op the analysis does not understand; the channels it touches are frozen."""

    node: str
    op: str
    module: str
    reason: str


@dataclass
class OpContext:
    """An op's node, its argument values and labels, and where handlers record what they find."""

    node: fx.Node
    args: tuple
    kwargs: dict
    largs: tuple
    lkwargs: dict
    out: Any
    table: SlotTable
    root: nn.Module
    module_name: str = ""
    graph_is_export: bool = False
    unsupported: list[Unsupported] = field(default_factory=list)
    constraints: list = field(default_factory=list)
    constants: list = field(default_factory=list)  # (module, attribute, labels) of channel constants
    model: nn.Module | None = None  # the user's model (attributes the graph module does not copy)

    def arg(self, i: int, name: str, default: Any = None) -> Any:
        """Argument by position or keyword."""
        if i < len(self.args):
            return self.args[i]
        return self.kwargs.get(name, default)

    def larg(self, i: int, name: str = "") -> Any:
        """Labels of an argument by position or keyword."""
        if i < len(self.largs):
            return self.largs[i]
        return self.lkwargs.get(name)

    def with_inputs(self, *extra: Any) -> OpContext:
        """A copy seeing the first input and then ``extra`` as its arguments (a module as its function)."""
        return dataclasses.replace(
            self, args=(self.args[0], *extra), largs=(self.largs[0],), kwargs={}, lkwargs={}
        )

    def shape(self, i: int, name: str = "") -> tuple[int, ...]:
        return tuple(self.arg(i, name).shape)

    @property
    def out_shape(self) -> tuple[int, ...]:
        return tuple(self.out.shape)

    @property
    def op_name(self) -> str:
        return op_name(self.node)

    @property
    def where(self) -> str:
        return f"{self.op_name} at {self.node.name}" + (f" in {self.module_name}" if self.module_name else "")

    def freeze_inputs(self, reason: str) -> None:
        """Freeze every channel that reaches this node."""
        for lab in iter_labels((self.largs, self.lkwargs)):
            self.table.freeze(lab, f"{reason} ({self.where})")

    def unsupported_op(self, reason: str) -> Labels:
        """Freeze the inputs, report the op, and return unlabeled output."""
        touched = any(True for _ in iter_labels((self.largs, self.lkwargs)))
        self.freeze_inputs(reason)
        if touched:
            self.unsupported.append(Unsupported(self.node.name, self.op_name, self.module_name, reason))
        return {} if isinstance(self.out, torch.Tensor) else structure_like(self.out)


def iter_labels(obj: Any):
    """Yield every label array inside a nested labels structure."""
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, (dict, list, tuple)):
                yield from iter_labels(v)
            elif v is not None and hasattr(v, "dtype"):
                yield v
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from iter_labels(v)


def structure_like(value: Any) -> Any:
    """Empty labels mirroring a (nested) output value."""
    if isinstance(value, torch.Tensor):
        return {}
    if isinstance(value, (list, tuple)):
        return [structure_like(v) for v in value]
    if isinstance(value, dict):
        return {k: structure_like(v) for k, v in value.items()}
    return None


def scope_of(node: fx.Node) -> str:
    """The qualified name of the innermost module whose ``forward`` made ``node`` ("" at the top level)."""
    stack = node.meta.get("nn_module_stack")
    if stack:
        path = list(stack.values())[-1]
        return path[0] if isinstance(path, tuple) else str(path)
    return ""


def op_name(node: fx.Node) -> str:
    """A normalised op name: ``add`` for operator.add, torch.add, Tensor.add_ and aten.add.Tensor."""
    t = node.target
    if node.op == "call_method":
        name = t
    elif node.op == "call_function":
        if isinstance(t, torch._ops.OpOverload):
            name = t.overloadpacket.__name__
        elif isinstance(t, torch._ops.OpOverloadPacket):
            name = t.__name__
        else:
            name = getattr(t, "__name__", str(t))
    else:
        return node.op
    name = name.strip("_") if name.startswith("__") else name
    if name.startswith("i") and name[1:] in {"add", "sub", "mul", "truediv", "floordiv", "and", "or"}:
        name = name[1:]
    if name.endswith("_") and not name.endswith("__"):
        name = name[:-1]
    return name
