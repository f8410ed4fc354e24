"""Similarity-preserving knowledge distillation (Tung and Mori, ICCV 2019) between matching layers.

For a batch of ``b`` inputs and a layer's output ``Q`` (b x -1), ``G = row_normalize(Q Q^T)`` (each row
divided by its L2 norm). For every pair of matching layers of a frozen teacher and a student::

    L_sp = sum_layers ||G_teacher - G_student||_F^2 / b^2
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import torch
import torch.nn.functional as F
from torch import nn

from .expand import ExpandedConv2d, ExpandedLinear

__all__ = ["SimilarityLoss", "default_layers", "similarity_gram", "similarity_loss"]


def similarity_gram(q: torch.Tensor) -> torch.Tensor:
    """``row_normalize(Q Q^T)`` of a batch of features (b x ...)."""
    q = q.flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1)


def similarity_loss(teacher: torch.Tensor, student: torch.Tensor) -> torch.Tensor:
    """``||G_t - G_s||_F^2 / b^2`` for one layer's teacher and student features."""
    b = teacher.shape[0]
    if student.shape[0] != b:
        raise ValueError(f"teacher and student batches differ: {b} and {student.shape[0]}")
    return (similarity_gram(teacher.detach()) - similarity_gram(student)).pow(2).sum() / b**2


def default_layers(teacher: nn.Module, student: nn.Module) -> list[str]:
    """The student's expanded blocks (else Conv2d and Linear layers) that have a namesake in the teacher."""
    t_names = {n for n, _ in teacher.named_modules()}
    found = [n for n, m in student.named_modules() if isinstance(m, (ExpandedConv2d, ExpandedLinear))]
    if not found:
        found = [n for n, m in student.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    return [n for n in found if n in t_names]


class SimilarityLoss:
    """SP-KD between the outputs of matching modules of a teacher and a student, read by forward hooks.

    ``layers``: student module names (matched to the teacher's module of the same name) or a mapping
    ``{student name: teacher name}``; by default the student's expanded blocks (else its Conv2d and Linear
    layers) that have a namesake in the teacher (a slim model keeps the dense model's names). Run both
    models on the same batch (the teacher under ``torch.no_grad()``), then call the object for the loss.
    Only the last batch's outputs are held.
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, layers: Iterable[str] | Mapping[str, str] | None = None
    ) -> None:
        if layers is None:
            layers = default_layers(teacher, student)
        pairs = dict(layers) if isinstance(layers, Mapping) else {n: n for n in layers}
        if not pairs:
            raise ValueError("SimilarityLoss needs at least one pair of layers")
        t_names, s_names = dict(teacher.named_modules()), dict(student.named_modules())
        for s_name, t_name in pairs.items():
            if s_name not in s_names:
                raise ValueError(f"the student has no module {s_name!r}")
            if t_name not in t_names:
                raise ValueError(
                    f"the teacher has no module {t_name!r} (matched to the student's {s_name!r})"
                )
        self.pairs = pairs
        self.teacher_out: dict[str, torch.Tensor] = {}
        self.student_out: dict[str, torch.Tensor] = {}
        self._handles = []
        for s_name, t_name in pairs.items():
            self._handles.append(s_names[s_name].register_forward_hook(self._keep(self.student_out, s_name)))
            self._handles.append(t_names[t_name].register_forward_hook(self._keep(self.teacher_out, s_name)))

    @staticmethod
    def _keep(store: dict[str, torch.Tensor], key: str):
        def hook(module, args, out):
            store[key] = out

        return hook

    def __call__(self) -> torch.Tensor:
        missing = [n for n in self.pairs if n not in self.teacher_out or n not in self.student_out]
        if missing:
            raise RuntimeError(
                f"run the teacher and the student on the batch first (no output for {missing[0]!r})"
            )
        total = sum(similarity_loss(self.teacher_out[n], self.student_out[n]) for n in self.pairs)
        self.teacher_out.clear()
        self.student_out.clear()
        return total

    def close(self) -> None:
        """Remove the hooks."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.teacher_out.clear()
        self.student_out.clear()
