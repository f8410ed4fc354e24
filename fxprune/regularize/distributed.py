"""Several processes, one decision: checks and reductions for pruning under ``torch.distributed``.

Under DistributedDataParallel every rank runs its own :class:`~fxprune.Pruner`. Gradient terms are applied
after DDP's all-reduce, so ranks that start from the same weights stay identical; scores computed from a
rank's own data (calibration statistics, activations) must be averaged with :func:`average_across_ranks`.
:func:`check_same_across_ranks` refuses to go on when the ranks disagree, naming the ranks that differ.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

__all__ = [
    "RankMismatchError",
    "average_across_ranks",
    "check_same_across_ranks",
    "gather_across_ranks",
    "is_distributed",
    "plan_fingerprint",
    "sum_across_ranks",
    "unwrap_model",
    "weights_fingerprint",
]


class RankMismatchError(RuntimeError):
    """The processes of a distributed run hold different weights or chose different channels."""


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group of more than one rank."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel / DataParallel wrapper (the model itself otherwise)."""
    wrappers = (nn.parallel.DistributedDataParallel, nn.DataParallel)
    while isinstance(model, wrappers):
        model = model.module
    return model


def weights_fingerprint(model: nn.Module) -> torch.Tensor:
    """A cheap float64 checksum of every parameter: a sum and a position-weighted sum per tensor.

    Two models with the same parameters give the same fingerprint bit for bit; any changed value or shape
    changes it (to float64 precision). Buffers are left out: DDP broadcasts them from rank 0 at the next
    forward, so BN running statistics legitimately differ between ranks after a step.
    """
    rows = []
    with torch.no_grad():
        for tensor in model.parameters():
            flat = tensor.detach().reshape(-1).to(torch.float64)
            ramp = torch.linspace(1.0, 2.0, flat.numel(), dtype=torch.float64, device=flat.device)
            rows.append(torch.stack([flat.sum(), (flat * ramp).sum(), torch.tensor(float(flat.numel()))]))
    if not rows:
        return torch.zeros(3, dtype=torch.float64)
    return torch.stack([r.cpu() for r in rows]).sum(0)


def plan_fingerprint(remove: Mapping[int, Iterable[int]]) -> torch.Tensor:
    """A checksum of a plan (group id -> removed atoms) that differs when any choice differs."""
    total = np.zeros(3, dtype=np.float64)
    for gid, atoms in sorted(remove.items()):
        idx = np.asarray(list(atoms), dtype=np.float64)
        total += [len(idx), float(((idx + 1) * (gid + 1)).sum()), float(((idx + 1) ** 2 * (gid + 2)).sum())]
    return torch.from_numpy(total)


def _device_for_backend() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def check_same_across_ranks(fingerprint: torch.Tensor, what: str) -> None:
    """Compare ``fingerprint`` across all ranks; raise :class:`RankMismatchError` naming the odd ranks.

    ``what`` says what was compared ("weights at Pruner creation", "chosen channels at prune()"). Does
    nothing outside a distributed run. Every rank must call it (it is a collective).
    """
    if not is_distributed():
        return
    local = fingerprint.detach().to(torch.float64).reshape(-1).to(_device_for_backend())
    gathered = [torch.empty_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, local)
    reference = gathered[0]
    differ = [rank for rank, other in enumerate(gathered) if not torch.equal(other, reference)]
    if differ:
        raise RankMismatchError(
            f"{what} differ across ranks: rank(s) {', '.join(map(str, differ))} do not match rank 0. "
            "Start every rank from the same weights (load the checkpoint on every rank, or broadcast it "
            "before creating the Pruner) and keep the gradient terms after DDP's all-reduce."
        )


def average_across_ranks(values: Mapping[int, np.ndarray]) -> dict[int, np.ndarray]:
    """Average per-group score arrays over all ranks (identity outside a distributed run).

    Use it for any score a method computes from its rank's own data, so every rank ranks channels alike.
    """
    if not is_distributed():
        return {k: np.asarray(v) for k, v in values.items()}
    keys = sorted(values)
    sizes = [int(np.asarray(values[k]).size) for k in keys]
    parts = [np.asarray(values[k], dtype=np.float64).reshape(-1) for k in keys]
    flat = np.concatenate(parts) if parts else np.zeros(0)
    tensor = torch.from_numpy(flat).to(_device_for_backend())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    mean = (tensor / dist.get_world_size()).cpu().numpy()
    out, start = {}, 0
    for key, size in zip(keys, sizes):
        out[key] = mean[start : start + size].reshape(np.asarray(values[key]).shape)
        start += size
    return out


def gather_across_ranks(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Every rank's ``tensors`` concatenated in rank order (the list itself outside a distributed run).

    For statistics a method collects per sample from its rank's own batches (CCM's calibration Grams):
    after the gather every rank decides from the same samples. Lists may differ in length across ranks.
    """
    if not is_distributed():
        return list(tensors)
    gathered: list[list[torch.Tensor] | None] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, [t.detach().cpu() for t in tensors])
    return [t for part in gathered for t in (part or [])]


def sum_across_ranks(values: list[float]) -> list[float]:
    """Element-wise sums of ``values`` over all ranks (the values themselves outside a distributed run).

    For scalars a method averages over its rank's own batches (SLR's task loss): sum ``[total, count]``.
    """
    if not is_distributed():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64, device=_device_for_backend())
    dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor.cpu().tolist()
