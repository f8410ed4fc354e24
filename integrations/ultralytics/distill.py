"""Knowledge distillation from the dense model while a pruned YOLO model fine-tunes.

Pruning keeps every output shape, so the head's raw training outputs of the dense teacher and the slim
student align anchor by anchor. For each head output dict (both branches of end-to-end heads):

- classes: binary cross-entropy of the student's class logits against the teacher's sigmoid
  probabilities, minus the teacher's own entropy (so the term is 0 when they agree), summed over classes
  and anchors and divided by the sum of the teacher's probabilities (as ultralytics divides its class
  loss by the sum of its target scores);
- boxes: KL divergence from the teacher's DFL bin distributions to the student's (``reg_max > 1``),
  or L1 between the raw box outputs (``reg_max == 1``), mean over the 4 sides, weighted per anchor by the
  teacher's highest class probability (background anchors say little about boxes);
- optionally (``feature_weight``) similarity-preserving distillation
  (:func:`fxprune.overparam.similarity_loss`) of the head's input feature maps (the neck outputs): it
  compares batch-similarity matrices, so it needs no projection between the slim and dense widths.

Classification models distil the softmax of their logits (KL). The teacher is frozen: eval mode (BN
running statistics), no gradients, run under ``torch.no_grad()`` on the same preprocessed batch. It lives
beside the model, never inside it: :class:`DistillLoss` (the criterion wrapper) turns back into the plain
criterion when copied or pickled, so EMA copies and checkpoints never carry the teacher.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.overparam import similarity_loss

__all__ = ["DistillLoss", "Distiller", "freeze_teacher", "head_outputs", "load_teacher"]


def freeze_teacher(model: nn.Module) -> nn.Module:
    """A frozen copy of ``model``: float, eval mode, no parameter requires gradients."""
    teacher = copy.deepcopy(model).float().eval()
    teacher.criterion = None
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def load_teacher(path: str, device: torch.device | str = "cpu") -> nn.Module:
    """The model of an ultralytics checkpoint (a pickle: load only files you trust), frozen."""
    from ultralytics.nn.tasks import load_checkpoint

    model, _ = load_checkpoint(path)
    return freeze_teacher(model).to(device)


def head_outputs(preds: Any) -> list[dict[str, torch.Tensor]] | torch.Tensor:
    """The raw head outputs of a training- or eval-mode forward: a list of dicts holding ``boxes`` and
    ``scores`` (one per branch of end-to-end heads), or the logits tensor of a classifier."""
    if isinstance(preds, (tuple, list)) and len(preds) == 2 and not isinstance(preds[1], torch.Tensor):
        preds = preds[1]  # eval mode: (decoded, raw)
    elif isinstance(preds, (tuple, list)) and len(preds) == 2 and isinstance(preds[0], torch.Tensor):
        preds = preds[1] if preds[1].dim() == 2 else preds[0]  # classifier in eval mode: (probs, logits)
    if isinstance(preds, torch.Tensor):
        return preds
    if isinstance(preds, dict) and "one2many" in preds:
        return [preds[k] for k in ("one2many", "one2one") if k in preds]
    if isinstance(preds, dict) and "scores" in preds:
        return [preds]
    raise TypeError(f"cannot read the head outputs of a {type(preds).__name__} for distillation")


def class_term(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Soft-target BCE minus the teacher's entropy, over the sum of the teacher's probabilities."""
    t = teacher.float().sigmoid()
    s = student.float()
    bce = F.binary_cross_entropy_with_logits(s, t, reduction="sum")
    entropy = F.binary_cross_entropy_with_logits(teacher.float(), t, reduction="sum")
    return (bce - entropy) / t.sum().clamp(min=1.0)


def box_term(student: torch.Tensor, teacher: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """KL of DFL distributions (or L1 of raw boxes), mean over sides, weighted per anchor (b, anchors)."""
    b, c, n = student.shape
    bins = c // 4
    if bins > 1:
        s = F.log_softmax(student.float().view(b, 4, bins, n), dim=2)
        t = F.log_softmax(teacher.float().view(b, 4, bins, n), dim=2)
        per_anchor = (t.exp() * (t - s)).sum(2).mean(1)
    else:
        per_anchor = (student.float() - teacher.float()).abs().mean(1)
    return (per_anchor * weight).sum() / weight.sum().clamp(min=1.0)


class Distiller:
    """The distillation loss of a student's raw outputs against a frozen teacher's, per image.

    ``weight`` scales the output terms (classes + boxes), ``feature_weight`` the similarity-preserving
    term on the head's input feature maps. Call with the student's predictions and the batch.
    """

    def __init__(self, teacher: nn.Module, weight: float = 1.0, feature_weight: float = 0.0) -> None:
        if weight < 0 or feature_weight < 0:
            raise ValueError(f"distillation weights must be >= 0, got {weight} and {feature_weight}")
        self.teacher = teacher.eval()
        self.weight, self.feature_weight = float(weight), float(feature_weight)
        self.last: dict[str, torch.Tensor] = {}  # the last batch's terms, unweighted

    def __call__(self, preds: Any, batch: dict) -> torch.Tensor:
        """The weighted distillation loss (a scalar, mean per image) for the student's ``preds``."""
        img = batch["img"]
        self.teacher.eval()
        with torch.no_grad():
            target = self.teacher(img.to(dtype=next(self.teacher.parameters()).dtype))
        student, teacher = head_outputs(preds), head_outputs(target)
        if isinstance(student, torch.Tensor):
            s_log, t_log = F.log_softmax(student.float(), 1), F.log_softmax(teacher.float(), 1)
            total = self.weight * F.kl_div(s_log, t_log, reduction="batchmean", log_target=True)
            self.last = {"kd": total.detach()}
            return total
        cls = box = feat = torch.zeros((), device=img.device)
        for s, t in zip(student, teacher):
            cls = cls + class_term(s["scores"], t["scores"])
            fg = t["scores"].detach().float().sigmoid().amax(1)
            box = box + box_term(s["boxes"], t["boxes"], fg)
        if self.feature_weight:
            s_feats, t_feats = student[0].get("feats"), teacher[0].get("feats")
            if not s_feats or not t_feats:
                raise ValueError("feature distillation needs a head that returns its input feature maps")
            feat = sum(similarity_loss(t.float(), s.float()) for s, t in zip(s_feats, t_feats))
        total = self.weight * (cls + box) + self.feature_weight * feat
        self.last = {"kd_cls": cls.detach(), "kd_box": box.detach(), "kd_feat": feat.detach()}
        return total


def _plain(criterion: Any) -> Any:
    return criterion


class DistillLoss:
    """Wraps a model's criterion: adds the distillation loss (per image, times the batch size, as
    ultralytics scales its own loss) while gradients are enabled; validation losses are unchanged.

    A copy (``copy.deepcopy``, as ultralytics' EMA makes) or a pickle of the wrapper is the plain
    criterion: the teacher never reaches an EMA copy or a checkpoint.
    """

    def __init__(self, criterion: Any, distiller: Distiller) -> None:
        self.criterion, self.distiller = criterion, distiller

    def __call__(self, preds: Any, batch: dict) -> tuple[torch.Tensor, Any]:
        loss, items = self.criterion(preds, batch)
        if torch.is_grad_enabled():
            loss = loss.sum() + self.distiller(preds, batch) * int(batch["img"].shape[0])
        return loss, items

    def __deepcopy__(self, memo: dict) -> Any:
        return copy.deepcopy(self.criterion, memo)

    def __reduce__(self) -> tuple:
        return _plain, (self.criterion,)

    def __getattr__(self, name: str) -> Any:  # criterion.update() and friends
        if name in ("criterion", "distiller"):
            raise AttributeError(name)
        return getattr(self.criterion, name)
