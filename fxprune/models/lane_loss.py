"""The UFLD loss: classification over gridding cells, structural terms and auxiliary segmentation.

``L = L_cls + sim_weight * L_sim + shape_weight * L_shp + seg_weight * L_seg`` (Qin et al. 2020):

* ``L_cls``: softmax focal loss (gamma 2) over the ``griding_num + 1`` classes of every row anchor and
  lane;
* ``L_sim``: smooth-L1 between the logits of adjacent row anchors (neighbouring rows look alike);
* ``L_shp``: L1 between consecutive first differences of the expected cell position over the upper half
  of the anchors (lanes are locally straight);
* ``L_seg``: cross-entropy of the auxiliary segmentation head.

The defaults are the released TuSimple configuration (``sim_loss_w = 1.0``, ``shp_loss_w = 0.0``, seg 1).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["shape_loss", "similarity_loss", "softmax_focal_loss", "ufld_loss"]


def softmax_focal_loss(logits: torch.Tensor, labels: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """Focal loss over dim 1: ``-(1 - p_y)^gamma log p_y``, averaged (UFLD's ``SoftmaxFocalLoss``)."""
    log_p = F.log_softmax(logits, dim=1)
    factor = (1.0 - log_p.exp()).pow(gamma)
    return F.nll_loss(factor * log_p, labels)


def similarity_loss(logits: torch.Tensor) -> torch.Tensor:
    """Smooth-L1 of the logit differences between adjacent row anchors; ``logits`` is (N, C, rows, lanes)."""
    diff = logits[:, :, :-1, :] - logits[:, :, 1:, :]
    return F.smooth_l1_loss(diff, torch.zeros_like(diff))


def shape_loss(logits: torch.Tensor) -> torch.Tensor:
    """L1 between consecutive first differences of the expected cell over the first ``rows // 2`` anchors."""
    cells = logits.shape[1] - 1
    prob = torch.softmax(logits[:, :cells], dim=1)
    index = torch.arange(cells, dtype=prob.dtype, device=prob.device).view(1, -1, 1, 1)
    pos = (prob * index).sum(1)  # (N, rows, lanes)
    half = logits.shape[2] // 2
    diff = pos[:, :half] - pos[:, 1 : half + 1]
    if diff.shape[1] < 2:
        return logits.new_zeros(())
    return (diff[:, :-1] - diff[:, 1:]).abs().mean(dim=(0, 2)).mean()


def ufld_loss(
    cls_out: torch.Tensor,
    cls_target: torch.Tensor,
    seg_out: torch.Tensor | None = None,
    seg_target: torch.Tensor | None = None,
    *,
    sim_weight: float = 1.0,
    shape_weight: float = 0.0,
    seg_weight: float = 1.0,
    gamma: float = 2.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """The total UFLD loss and its parts (floats, for logging).

    ``cls_out`` (N, griding_num + 1, rows, lanes) against ``cls_target`` (N, rows, lanes);
    ``seg_out`` (N, lanes + 1, h, w) against ``seg_target`` (N, h, w) when the model has the aux head.
    """
    if cls_target.shape != (cls_out.shape[0], *cls_out.shape[2:]):
        raise ValueError(
            f"cls_target {tuple(cls_target.shape)} does not match cls_out {tuple(cls_out.shape)} "
            "(expected (N, rows, lanes))"
        )
    parts = {"cls": softmax_focal_loss(cls_out, cls_target, gamma)}
    if sim_weight:
        parts["sim"] = sim_weight * similarity_loss(cls_out)
    if shape_weight:
        parts["shp"] = shape_weight * shape_loss(cls_out)
    if seg_out is not None and seg_weight:
        if seg_target is None:
            raise ValueError("seg_out given without seg_target")
        parts["seg"] = seg_weight * F.cross_entropy(seg_out, seg_target)
    total = sum(parts.values())
    return total, {k: float(v.detach()) for k, v in parts.items()}
