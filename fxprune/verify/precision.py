"""Half-precision models (fp16, bf16) are verified in fp32.

The masked original and the slim model sum the kept channels in different orders; in fp16 or bf16 that
alone moves outputs by 1e-3 .. 1e-2 (relative), far above the tolerance that catches a wrong slice. The
model's fp16/bf16 tensors are therefore cast to fp32 for the verification passes and cast back afterwards
(both casts are exact), so the model keeps its dtype.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..capture.inputs import map_tensors
from ..capture.modules import named_tensors

__all__ = ["LOW_PRECISION", "cast_inputs", "promote_to_fp32", "restore_dtypes"]

LOW_PRECISION = (torch.float16, torch.bfloat16)


def cast_inputs(example_inputs: Any, dtype: torch.dtype) -> Any:
    """The example inputs with every fp16/bf16 tensor cast to ``dtype`` (nested tuples, lists, dicts)."""
    return map_tensors(example_inputs, lambda t: t.to(dtype) if t.dtype in LOW_PRECISION else t)


def promote_to_fp32(model: nn.Module) -> dict[str, torch.dtype]:
    """Cast ``model``'s fp16/bf16 parameters and buffers to fp32 in place (Parameter objects are kept, so
    tied parameters stay tied); returns their names and dtypes for :func:`restore_dtypes`."""
    cast: dict[str, torch.dtype] = {}
    named = named_tensors(model)
    with torch.no_grad():
        for name, t in named:
            if t.dtype in LOW_PRECISION:
                cast[name] = t.dtype
                t.data = t.data.float()
    return cast


def restore_dtypes(model: nn.Module, dtypes: dict[str, torch.dtype]) -> None:
    """Give the tensors named in ``dtypes`` their dtype back (fp16/bf16 -> fp32 -> back is lossless)."""
    if not dtypes:
        return
    named = named_tensors(model)
    with torch.no_grad():
        for name, t in named:
            if name in dtypes and t.dtype != dtypes[name]:
                t.data = t.data.to(dtypes[name])
