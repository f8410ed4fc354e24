"""Compare two models' (nested) outputs: shapes must match, values within a relative tolerance."""

from __future__ import annotations

from typing import Any

import torch

__all__ = ["compare_outputs", "flatten_outputs"]


def flatten_outputs(out: Any, prefix: str = "out") -> list[tuple[str, torch.Tensor]]:
    """Every tensor of a nested output (tuples, lists, dicts, dataclass-like objects), with its path."""
    if isinstance(out, torch.Tensor):
        return [(prefix, out)]
    if isinstance(out, dict):
        return [t for k in out for t in flatten_outputs(out[k], f"{prefix}[{k!r}]")]
    if isinstance(out, (list, tuple)):
        return [t for i, v in enumerate(out) for t in flatten_outputs(v, f"{prefix}[{i}]")]
    return []


def compare_outputs(reference: Any, candidate: Any) -> tuple[float, list[str]]:
    """Max relative error over all output tensors, and a list of structural problems (shape changes)."""
    ref, cand = flatten_outputs(reference), flatten_outputs(candidate)
    problems = []
    if len(ref) != len(cand):
        problems.append(f"{len(ref)} output tensors became {len(cand)}")
        return float("inf"), problems
    worst = 0.0
    for (path, a), (_, b) in zip(ref, cand):
        if a.shape != b.shape:
            problems.append(f"{path}: shape {tuple(a.shape)} became {tuple(b.shape)}")
            continue
        if not a.is_floating_point():
            if not torch.equal(a, b):
                problems.append(f"{path}: integer output changed")
            continue
        a, b = a.double(), b.double()
        scale = a.abs().max().item() + 1e-12
        worst = max(worst, (a - b).abs().max().item() / scale)
    return worst, problems
