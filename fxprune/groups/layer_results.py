"""Meta results of plain layers computed from shapes, noted in the cost table as torch's kernels would be.

On the meta-tensor pass a convolution or linear layer run through torch's meta kernels and the cost
recorder's dispatch mode costs far more than its arithmetic on shapes: for the plain cases below the result
shape is worked out here and the recorder notes the ops the layer would have run
(``tests/test_speed_meta.py`` compares the tables).
"""

from __future__ import annotations

import torch
from torch import nn

from ..capture.meta import meta_empty, outside_python_modes
from .costs import CostRecorder

__all__ = ["CONVS", "conv_like", "linear_like"]

CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_aten = torch.ops.aten


def conv_like(m: nn.Module, x: torch.Tensor, recorder: CostRecorder) -> torch.Tensor | None:
    """The meta result of a plain convolution layer, noted by ``recorder`` as the convolution op itself would
    be; None (run the layer) unless the input is a batched contiguous meta tensor of the weight's dtype and
    the layer has zero padding given as numbers, its class's forward and no hooks."""
    w, b = m.weight, m.bias
    k = w.dim() - 2
    if (
        not _plain_call(m, x) or m.padding_mode != "zeros" or isinstance(m.padding, str)
        or x.dim() != k + 2 or x.shape[1] != w.shape[1] * m.groups or (b is not None and b.dtype != w.dtype)
    ):
        return None
    spatial = [
        (x.shape[2 + i] + 2 * m.padding[i] - m.dilation[i] * (w.shape[2 + i] - 1) - 1) // m.stride[i] + 1
        for i in range(k)
    ]
    if any(s < 1 for s in spatial):
        return None  # the layer raises its own error
    out = meta_empty((x.shape[0], w.shape[0], *spatial), x.dtype)
    args = (x, w, b, list(m.stride), list(m.padding), list(m.dilation), False, [0] * k, m.groups)
    recorder.note_op(_aten.convolution, args, {}, out)
    return out


def linear_like(m: nn.Linear, x: torch.Tensor, recorder: CostRecorder) -> torch.Tensor | None:
    """The meta result of a plain linear layer on a batch of vectors, noted by ``recorder`` as torch's
    decomposition would be (``t`` of the weight, then ``addmm``, or ``mm`` without bias); None (run the
    layer) unless the input is a 2-D contiguous meta tensor of the weight's dtype and width, and the layer
    has its class's forward and no hooks."""
    w, b = m.weight, m.bias
    if (
        not _plain_call(m, x) or x.dim() != 2 or w.dim() != 2 or x.shape[1] != w.shape[1]
        or (b is not None and (b.dtype != w.dtype or b.dim() != 1 or b.shape[0] != w.shape[0]))
    ):
        return None
    with outside_python_modes():
        wt = w.t()
    recorder.note_op(_aten.t, (w,), {}, wt)
    out = meta_empty((x.shape[0], w.shape[0]), x.dtype)
    if b is None:
        recorder.note_op(_aten.mm, (x, wt), {}, out)
    else:
        recorder.note_op(_aten.addmm, (b, x, wt), {}, out)
    return out


def _plain_call(m: nn.Module, x: torch.Tensor) -> bool:
    """Whether calling layer ``m`` on ``x`` runs just its class's forward on contiguous meta tensors of one
    dtype: no hooks (the layer's or global), no instance ``forward``, input and weight on the meta device."""
    w = m.weight
    return not (
        m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__
        or nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        or x.device.type != "meta" or w.device.type != "meta" or x.dtype != w.dtype
        or not x.is_contiguous() or not w.is_contiguous()
    )
