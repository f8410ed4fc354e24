"""Fine-tune a slim model over-parameterized, distilling from the dense model, then merge it back.

Example::

    ft = OverparamFinetune(slim, dense, factor=2.0, weight=3000.0)   # expands ``slim`` in place
    opt = torch.optim.SGD(slim.parameters(), lr=0.01, momentum=0.9)  # after expanding
    for x, y in loader:
        loss = F.cross_entropy(slim(x), y) + ft.penalty(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    ft.merge()  # ``slim`` has its compact layers again, with the fine-tuned weights
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
from torch import nn

from .expand import expand, merge
from .similarity import SimilarityLoss

__all__ = ["OverparamFinetune"]


class OverparamFinetune:
    """Expand ``student`` in place, give the SP-KD term against the frozen ``teacher``, merge at the end.

    ``weight`` multiplies the similarity loss (0: over-parameterized fine-tuning without distillation,
    and the teacher is never run). ``exclude``: module-name globs left compact. ``layers``: as in
    :class:`SimilarityLoss` (default: every expanded layer, matched by name).
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module | None,
        *,
        factor: float = 2.0,
        weight: float = 1.0,
        exclude: Iterable[str] = (),
        layers: Iterable[str] | Mapping[str, str] | None = None,
        seed: int | None = 0,
    ) -> None:
        if weight > 0 and teacher is None:
            raise ValueError("a teacher is needed for the similarity loss (or pass weight=0)")
        self.student, self.teacher, self.weight = student, teacher, weight
        self.expanded = expand(student, factor, exclude=exclude, seed=seed)
        self.sp: SimilarityLoss | None = None
        if weight > 0:
            teacher.eval()
            for p in teacher.parameters():
                p.requires_grad_(False)
            self.sp = SimilarityLoss(teacher, student, layers)

    def penalty(self, inputs) -> torch.Tensor:
        """The weighted SP-KD loss for the batch the student has just run on (runs the teacher on it)."""
        if self.sp is None:
            return torch.zeros(())
        with torch.no_grad():
            self.teacher(inputs)
        return self.weight * self.sp()

    def merge(self) -> list[str]:
        """Remove the hooks and merge every expanded block back into its compact layer."""
        if self.sp is not None:
            self.sp.close()
            self.sp = None
        return merge(self.student)
