"""Which outputs of an ultralytics model are its interface, and the example input it is analysed with.

In training mode ultralytics heads return a dict: ``boxes`` and ``scores`` (plus ``mask_coefficient`` and
``proto`` for segmentation, ``kpts`` for pose, ``angle`` for OBB, nested under ``one2many``/``one2one``
for end-to-end heads) and ``feats``, the head's *input* feature maps, which the loss reads only for their
spatial sizes. In eval mode they return the decoded predictions first. Everything but ``feats`` is the
interface: the neck layers that produce ``feats`` may change width.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

__all__ = [
    "deployment_form",
    "example_input",
    "is_ultralytics_model",
    "sync_width_attributes",
    "yolo_interface",
]

SHAPE_ONLY_KEYS = ("feats",)


def yolo_interface(output: Any) -> Any:
    """The tensors of an ultralytics model's output that must keep their channels (all but ``feats``)."""
    if isinstance(output, dict):
        return {k: yolo_interface(v) for k, v in output.items() if k not in SHAPE_ONLY_KEYS}
    if isinstance(output, (list, tuple)):
        return [yolo_interface(v) for v in output]
    return output


def is_ultralytics_model(model: Any) -> bool:
    """An ``ultralytics.nn.tasks.BaseModel`` (the ``.model`` of ``YOLO(...)``)."""
    try:
        from ultralytics.nn.tasks import BaseModel
    except ImportError:
        return False
    return isinstance(model, BaseModel)


def deployment_form(model: nn.Module) -> nn.Module:
    """A float, eval-mode copy of an ultralytics model whose heads return what ultralytics' exporter
    writes: the decoded predictions only. In plain eval mode the heads also return their raw maps and
    input feature maps, which every runtime would then compute and write out on top of the deployed work.
    """
    net = copy.deepcopy(model).float().eval()
    for module in net.modules():
        if hasattr(module, "export"):
            module.export = True
            if hasattr(module, "format"):
                module.format, module.dynamic = "onnx", False
    return net


def example_input(model: nn.Module, imgsz: int, device: torch.device | str | None = None) -> torch.Tensor:
    """A zero image batch of one at ``imgsz`` with the model's input channels, on ``device``."""
    cfg = getattr(model, "yaml", None)
    channels = int(cfg.get("channels", 3)) if isinstance(cfg, dict) else 3
    if device is None:
        device = next(model.parameters()).device
    return torch.zeros(1, channels, imgsz, imgsz, device=device)


def sync_width_attributes(model: nn.Module) -> list[str]:
    """Update the hidden-width attributes that only the export path reads, after slimming; returns the
    modules changed.

    C2f-style blocks (C2f, C3k2, C2fAttn, RepNCSPELAN4) split ``cv1``'s output in two halves of ``self.c``
    channels in ``forward_split``, the path ``export()`` uses; training and analysis use ``chunk(2)``,
    which needs no constant. Pruning keeps the halves equal, so ``c`` is half of ``cv1``'s new width.
    """
    changed = []
    for name, m in model.named_modules():
        conv = getattr(getattr(m, "cv1", None), "conv", None)
        if hasattr(m, "forward_split") and isinstance(getattr(m, "c", None), int) and conv is not None:
            half = conv.out_channels // 2
            if m.c != half:
                m.c = half
                changed.append(name)
    return changed
