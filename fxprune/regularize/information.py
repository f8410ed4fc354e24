"""How much information each channel of a feature map carries, and how many channels keep a fraction of it.

A feature map of one image is a C x HW matrix ``F``; everything here works on its Gram ``F F^T`` (C x C),
so the statistics of a calibration set stay small (no feature maps are kept).

* ``"nuclear"``: the information is the nuclear norm ``||F||_*`` (sum of singular values, the square
  roots of the Gram's eigenvalues). Channels are ranked by the drop of ``||F||_*`` when their row is
  zeroed (averaged over images) and kept in that order until the kept rows span ``threshold`` of the
  nuclear norm (``||F P_K||_*``, ``P_K`` the projection onto their span, averaged over images): a channel
  that adds nothing to the span of better-ranked ones (a duplicate, a dead channel) goes last.
* ``"variance"`` (PCA-style): the information is the variance of the channels (each centred over
  positions, pooled over images). Channels are picked greedily, each time the one explaining most of the
  variance left unexplained by those already picked (pivoted Cholesky of the covariance); they are kept
  until the picked channels explain ``threshold`` of the total variance.

Several maps of the same channels (a residual stream read at several places) combine by averaging their
normalised scores and their kept fractions: the group gets one width.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["CRITERIA", "ChannelStats", "Selection", "nuclear_norms", "select_channels"]

CRITERIA = ("nuclear", "variance")


class ChannelStats:
    """Per-image Grams (raw and centred) of one feature map, the last ``max_images`` images only."""

    def __init__(self, max_images: int) -> None:
        self.grams: deque[torch.Tensor] = deque(maxlen=max_images)
        self.centred: deque[torch.Tensor] = deque(maxlen=max_images)

    @torch.no_grad()
    def add(self, fmap: torch.Tensor) -> None:
        """Add a batch of maps (B x C x H x W, or B x C)."""
        f = fmap.detach().double().flatten(2) if fmap.dim() > 2 else fmap.detach().double()[:, :, None]
        c = f - f.mean(2, keepdim=True)
        for g, gc in zip((f @ f.transpose(1, 2)).cpu(), (c @ c.transpose(1, 2)).cpu()):
            self.grams.append(g)
            self.centred.append(gc)

    def __len__(self) -> int:
        return len(self.grams)


def nuclear_norms(grams: torch.Tensor) -> torch.Tensor:
    """Nuclear norm of each matrix ``F`` whose Gram ``F F^T`` is given (..., C, C)."""
    return torch.linalg.eigvalsh(grams).clamp(min=0).sqrt().sum(-1)


def _nuclear_drops(grams: torch.Tensor) -> torch.Tensor:
    """Per channel: mean over images of ``||F||_* - ||F with that row zeroed||_*`` (grams: N x C x C)."""
    full = nuclear_norms(grams)
    drops = torch.empty(grams.shape[-1], dtype=grams.dtype)
    for i in range(grams.shape[-1]):
        g = grams.clone()
        g[:, i, :] = 0
        g[:, :, i] = 0
        drops[i] = (full - nuclear_norms(g)).mean()
    return drops


def _span_nuclear(grams: torch.Tensor, idx: list[int]) -> torch.Tensor:
    """Per image, the nuclear norm of ``F`` projected onto the span of the rows ``idx`` (grams: N x C x C).

    With ``P`` that projection, ``(F P)(F P)^T = G[:, K] G[K, K]^+ G[K, :]``.
    """
    k = torch.as_tensor(idx)
    gk = grams[:, :, k]
    inv = torch.linalg.pinv(grams[:, k][:, :, k], hermitian=True, rtol=1e-10)
    return nuclear_norms(gk @ inv @ gk.transpose(1, 2))


def _nuclear_order(grams: list[torch.Tensor], ranking: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Walk ``ranking``; a channel whose row adds nothing to the span of those before it goes last.

    Returns the order and ``kept[k-1]``: the nuclear norm the first ``k`` channels span, as a fraction of
    the whole (averaged over images and maps).
    """
    totals = [nuclear_norms(g).clamp(min=1e-30) for g in grams]
    kept, redundant, fractions, current = [], [], [], 0.0
    for i in ranking.tolist():
        frac = float(
            np.mean([(_span_nuclear(g, kept + [i]) / t).mean().item() for g, t in zip(grams, totals)])
        )
        if frac - current <= 1e-9:
            redundant.append(i)
            continue
        kept.append(i)
        fractions.append(frac)
        current = frac
    return np.asarray(kept + redundant), np.asarray(fractions + [current] * len(redundant))


def _greedy_variance(cov: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """Greedy channel picks on a covariance: each pick explains most of the variance still unexplained.

    Returns the pick order and the variance each pick explained (the residual covariance is updated as
    in a pivoted Cholesky factorisation).
    """
    residual = cov.clone()
    tol = 1e-12 * float(cov.trace().clamp(min=1e-300))
    free = torch.ones(cov.shape[0], dtype=torch.bool)
    order, gains = [], []
    for _ in range(cov.shape[0]):
        diag = residual.diagonal()
        live = free & (diag > tol)
        gain = torch.where(live, residual.pow(2).sum(0) / diag.clamp(min=tol), torch.zeros_like(diag))
        gain = torch.where(free, gain, torch.full_like(diag, -1.0))
        i = int(gain.argmax())
        order.append(i)
        gains.append(max(float(gain[i]), 0.0))
        free[i] = False
        if diag[i] > tol:
            residual = residual - residual[:, i : i + 1] @ residual[i : i + 1, :] / residual[i, i]
    return np.asarray(order), np.asarray(gains)


@dataclass
class Selection:
    """Channel scores (higher is more informative) and how many channels reach the threshold."""

    scores: np.ndarray
    keep: int
    kept_fraction: np.ndarray  # kept_fraction[k-1]: information kept by the k best channels


def select_channels(maps: list[ChannelStats], threshold: float, criterion: str = "nuclear") -> Selection:
    """Score the channels of one group from its maps and find the width that keeps ``threshold``.

    ``threshold >= 1`` keeps every channel.
    """
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    maps = [m for m in maps if len(m)]
    if not maps:
        raise ValueError("no calibration statistics for this group")
    width = maps[0].grams[0].shape[0]
    if criterion == "nuclear":
        grams = [torch.stack(list(m.grams)) for m in maps]
        drops = sum(_nuclear_drops(g) / nuclear_norms(g).mean().clamp(min=1e-30) for g in grams) / len(maps)
        order, kept = _nuclear_order(grams, np.argsort(-drops.numpy(), kind="stable"))
    else:
        covs = [torch.stack(list(m.centred)).sum(0) for m in maps]
        cov = sum(c / c.trace().clamp(min=1e-30) for c in covs) / len(covs)
        order, gains = _greedy_variance(cov)
        kept = np.cumsum(gains) / max(float(cov.trace()), 1e-30)
    scores = np.empty(width)
    scores[order] = np.arange(width, 0, -1, dtype=np.float64)  # earlier in the order = more informative
    if threshold >= 1.0:
        keep = width
    else:
        reached = np.nonzero(kept >= threshold)[0]
        keep = int(reached[0]) + 1 if len(reached) else width
    return Selection(scores=np.asarray(scores, dtype=np.float64), keep=keep, kept_fraction=kept)
