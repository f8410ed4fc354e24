"""The parameter slices of one channel group, as tensors a regularizer can read and write per channel."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ..groups.grouping import Group

__all__ = ["ChannelSlice", "GroupChannels", "slice_role"]

_NORMS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm)
_TRANSPOSED = (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def slice_role(module: nn.Module, param: str, dim: int) -> str:
    """``"out"`` (filters a layer writes: conv/linear weight rows, bias), ``"norm"`` (BN gamma/beta),
    ``"in"`` (the input slices of a consumer) or ``"other"``."""
    attr = param.rpartition(".")[2]
    if isinstance(module, _NORMS):
        return "norm"
    if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear)):
        if attr == "bias":
            return "out"
        out_dim = 1 if isinstance(module, _TRANSPOSED) else 0
        return "out" if dim == out_dim else "in"
    return "other"


@dataclass
class ChannelSlice:
    """A parameter dimension of a group: ``atom[j]`` is the atom at position ``j`` (-1: another group's)."""

    module: str
    param: str
    dim: int
    role: str
    atom: np.ndarray
    _cache: dict = field(default_factory=dict, repr=False)

    def tensor(self, model: nn.Module) -> torch.Tensor:
        return model.get_parameter(self.param)

    def per_position(self, per_atom: torch.Tensor) -> torch.Tensor:
        """Spread one value per atom onto this dimension's positions (0 where the atom is another group's)."""
        key = ("idx", per_atom.device)
        idx = self._cache.get(key)
        if idx is None:
            atom = torch.as_tensor(self.atom, dtype=torch.long)
            idx = self._cache[key] = (atom.clamp(min=0).to(per_atom.device), (atom >= 0).to(per_atom.device))
        gather, valid = idx
        return torch.where(
            valid, per_atom[gather], torch.zeros((), dtype=per_atom.dtype, device=gather.device)
        )

    def broadcast(self, values: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """``values`` (one per position of ``dim``) shaped to broadcast against ``t``."""
        shape = [1] * t.dim()
        shape[self.dim] = -1
        return values.to(t.dtype).view(shape)

    def rows(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` with ``dim`` first, flattened to (positions, rest)."""
        return t.movedim(self.dim, 0).reshape(t.shape[self.dim], -1)

    @property
    def is_filter(self) -> bool:
        """A conv/linear weight dimension holding the filters that write the channels."""
        return self.role == "out" and self.param.endswith("weight")

    def to_atoms(self, per_position: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Sum per-position values into their atoms: ``(sums, counts)``, float64 on the CPU."""
        valid = torch.as_tensor(self.atom >= 0)
        idx = torch.as_tensor(self.atom)[valid]
        values = per_position.detach().double().cpu()[valid]
        sums = torch.zeros(width, dtype=torch.float64).index_add_(0, idx, values)
        counts = torch.zeros(width, dtype=torch.float64).index_add_(0, idx, torch.ones_like(values))
        return sums, counts


class GroupChannels:
    """A discovered group seen as per-channel weight vectors ``w_i`` (the concatenation of its slices).

    ``roles`` chooses which slices count as the group's weights: all of them (the *group* scope) or only
    the filters a layer writes plus, where asked, the norm layers (the papers' *restricted* scope).
    """

    def __init__(self, group: Group, model: nn.Module, roles: Iterable[str]) -> None:
        self.group = group
        self.roles = frozenset(roles)
        self.all_slices: list[ChannelSlice] = []
        params = dict(model.named_parameters())
        for b in group.blocks:
            if b.passive:
                continue
            module = model.get_submodule(b.module)
            for name, dim in b.members:
                if name not in params or not params[name].requires_grad:
                    continue  # buffers (BN statistics) and frozen weights are not regularized
                role = slice_role(module, name, dim)
                self.all_slices.append(
                    ChannelSlice(b.module, name, dim, role, group.block_atom_index[b.base])
                )
        self.slices = [s for s in self.all_slices if s.role in self.roles]
        self.pruned = torch.zeros(group.width, dtype=torch.bool)

    @property
    def id(self) -> int:
        return self.group.id

    @property
    def width(self) -> int:
        return self.group.width

    def set_pruned(self, atoms: np.ndarray) -> None:
        mask = torch.zeros(self.width, dtype=torch.bool)
        mask[torch.as_tensor(np.asarray(atoms, dtype=np.int64))] = True
        self.pruned = mask

    def norm_scores(self, model: nn.Module, p: int = 1) -> np.ndarray:
        """Per atom, the mean over this group's slices of the slice's p-norm (p=1: the papers' filter L1)."""
        total = torch.zeros(self.width, dtype=torch.float64)
        count = torch.zeros(self.width, dtype=torch.float64)
        with torch.no_grad():
            for s in self.slices:
                sums, n = s.to_atoms(s.rows(s.tensor(model)).double().norm(p=p, dim=1), self.width)
                total += sums
                count += n
        return (total / count.clamp(min=1)).numpy()

    def magnitude_ratio(self, model: nn.Module) -> float:
        """``mean|w_K| / mean|w_P|`` over the group's slices (inf when the pruned weights are all zero)."""
        scores = torch.as_tensor(self.norm_scores(model))
        if not self.pruned.any() or self.pruned.all():
            return float("nan")
        kept, pruned = scores[~self.pruned].mean().item(), scores[self.pruned].mean().item()
        return kept / pruned if pruned > 0 else float("inf")

    @torch.no_grad()
    def add_decay(self, model: nn.Module, per_atom: torch.Tensor) -> None:
        """``grad(w_i) += per_atom[i] * w_i`` on the group's slices (a missing grad counts as zero)."""
        for s in self.slices:
            t = s.tensor(model)
            coef = s.broadcast(s.per_position(per_atom.to(t.device)), t)
            if t.grad is None:
                t.grad = torch.zeros_like(t)
            t.grad.add_(coef * t.detach())

    @torch.no_grad()
    def zero_pruned(self, model: nn.Module) -> None:
        """Set the pruned channels' slices to exactly zero."""
        for s in self.slices:
            t = s.tensor(model)
            keep = s.broadcast(1.0 - s.per_position(self.pruned.to(t.device).double()), t)
            t.mul_(keep)

    def filter_matrices(self, model: nn.Module) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per layer writing these channels: its flattened filters ``W`` (N x d) and which rows are kept."""
        out = []
        for s in self.filter_slices():
            valid = torch.as_tensor(s.atom >= 0)
            w = s.rows(s.tensor(model))[valid.to(s.tensor(model).device)]
            atoms = torch.as_tensor(s.atom)[valid]
            out.append((w, ~self.pruned[atoms]))
        return out

    def filter_slices(self) -> list[ChannelSlice]:
        """The filters of every layer writing these channels (whatever the scope's roles)."""
        return [s for s in self.all_slices if s.is_filter]
