"""FLOP and parameter counting built on ``torch.utils.flop_counter``."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..capture.inputs import ExampleInputs, as_args_kwargs, eval_mode
from ..capture.modules import named_tensors
from ..groups.costs import EXTRA_FLOP_FORMULAS


@contextmanager
def flop_counter() -> Iterator[FlopCounterMode]:
    """``torch.utils.flop_counter.FlopCounterMode`` that also counts attention on CPU.

    ``nn.MultiheadAttention``'s inference fast path (one fused kernel without a FLOP formula) is off while
    counting, and the fused CPU attention kernel is counted like torch's other attention kernels, so a
    transformer's count includes its projections and attention products (as the shape-only count of
    :class:`fxprune.groups.costs.CostTable` does).
    """
    fast_path = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            yield counter
    finally:
        torch.backends.mha.set_fastpath_enabled(fast_path)


def count_flops(model: nn.Module, example_inputs: ExampleInputs) -> int:
    """FLOPs of one forward pass (a multiply-add counts as 2), measured in eval mode without grad.

    ``example_inputs`` is a tensor, a tuple/list of positional inputs or a dict of keyword inputs.
    The model's train/eval state is restored afterwards. Counted with :func:`flop_counter`.
    """
    args, kwargs = as_args_kwargs(example_inputs)
    with eval_mode(model), torch.no_grad(), _params_without_grad(model), flop_counter() as counter:
        model(*args, **kwargs)
    return int(counter.get_total_flops())


@contextmanager
def _params_without_grad(model: nn.Module) -> Iterator[None]:
    """Parameters that do not require grad for the duration.

    Under ``no_grad`` a view of a parameter (``self.cls_token.expand(...)``) still requires grad but has
    no grad function; passed into a submodule, it makes the counter's module tracker fail.
    """
    params = [p for p in model.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def count_params(model: nn.Module) -> int:
    """Number of parameter elements, counting a parameter shared between modules once."""
    seen: set[int] = set()
    total = 0
    for _, param in named_tensors(model, buffers=False):
        if id(param) in seen:
            continue
        seen.add(id(param))
        total += param.numel()
    return total


def try_count_flops(model: nn.Module, example_inputs: ExampleInputs) -> tuple[int | None, str | None]:
    """:func:`count_flops`, or ``(None, why)`` when counting fails (a figure for a report, never fatal)."""
    try:
        return count_flops(model, example_inputs), None
    except Exception as e:  # a dispatch-mode or hook failure inside torch's counter
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        return None, f"FLOPs could not be counted ({type(e).__name__}: {reason})"
