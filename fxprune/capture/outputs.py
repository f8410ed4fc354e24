"""Choosing which outputs of a captured graph are the model's interface (their channels never change).

By default every tensor a model returns is its interface. Some models also return tensors that their
users read only for their shapes (ultralytics' Detect head returns its input feature maps in training mode
so that the loss can read their spatial sizes); freezing their channels would leave whole layers unpruned.
``select_outputs`` rewrites the captured graph so that it returns only the tensors a selector picks.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx
import torch.utils._pytree as pytree
from torch._subclasses.fake_tensor import FakeTensorMode

from .capture import Captured
from .inputs import ExampleInputs, as_args_kwargs

__all__ = ["OutputSelector", "select_outputs", "selected_tensors"]

OutputSelector = Callable[[Any], Any]


def selected_tensors(selector: OutputSelector | None, output: Any) -> list[torch.Tensor]:
    """The tensors ``selector`` picks from a model's ``output`` (all of them when ``selector`` is None)."""
    picked = output if selector is None else selector(output)
    return [t for t in pytree.tree_leaves(picked) if isinstance(t, torch.Tensor)]


class _Runner(fx.Interpreter):
    def placeholder(self, target: Any, args: tuple, kwargs: dict) -> Any:
        if str(target).startswith("**"):
            return {}  # ``**kwargs`` of a forward traced with none
        return super().placeholder(target, args, kwargs)


def _graph_output(gm: fx.GraphModule, example_inputs: ExampleInputs) -> Any:
    """The captured graph's output on fake tensors (shapes only), or on the real inputs as a fallback."""
    args, kwargs = as_args_kwargs(example_inputs)
    placeholders = [n.target for n in gm.graph.nodes if n.op == "placeholder"]
    args = tuple(args) + tuple(kwargs[p] for p in placeholders[len(args) :] if p in kwargs)
    fake_mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        fake = [fake_mode.from_tensor(a) if isinstance(a, torch.Tensor) else a for a in args]
        with fake_mode, torch.no_grad():
            return _Runner(gm).run(*fake)
    except Exception:
        with torch.no_grad():
            return _Runner(gm).run(*args)


def select_outputs(captured: Captured, selector: OutputSelector, example_inputs: ExampleInputs) -> None:
    """Make the captured graph return only the output tensors ``selector`` picks (in place).

    ``selector`` receives the output as the captured graph returns it (for a model captured with
    ``model.train()``, its training-mode output) and returns a tensor or any nesting of tuples, lists and
    dicts of tensors taken from it. Raises ``ValueError`` when it picks nothing from the output.
    """
    gm = captured.graph_module
    node = next(n for n in reversed(gm.graph.nodes) if n.op == "output")
    output = _graph_output(gm, example_inputs)
    try:
        wanted = {id(t) for t in selected_tensors(selector, output)}
    except Exception as e:
        raise ValueError(f"the outputs selector failed on the model's output: {type(e).__name__}: {e}") from e
    nodes = [n for n in pytree.tree_leaves(node.args[0]) if isinstance(n, fx.Node)]
    values = [v for v in pytree.tree_leaves(output) if isinstance(v, torch.Tensor)]
    if len(nodes) != len(values):
        raise ValueError(f"cannot match the {len(values)} output tensors to the graph's {len(nodes)} outputs")
    keep = [n for n, v in zip(nodes, values) if id(v) in wanted]
    if not keep:
        raise ValueError("the outputs selector picked no tensor of the model's output")
    node.args = (tuple(keep),)
    info = getattr(gm.graph._codegen, "pytree_info", None)
    if info is not None and info.out_spec is not None:  # torch.export graphs re-nest their flat outputs
        gm.graph._codegen.pytree_info = info._replace(out_spec=pytree.tree_structure(tuple(keep)))
    gm.recompile()
    captured.notes.append(f"interface: {len(keep)} of {len(nodes)} output tensors (outputs selector)")
