"""The TuSimple lane metric (accuracy, FP, FN) and the decoding of UFLD outputs into TuSimple lanes.

:func:`frame_scores` follows the official evaluation script (``LaneEval.bench`` of the TuSimple
benchmark): a ground-truth lane's tolerance is 20 px / cos(angle), the angle from a least-squares fit of
x on y over its labelled points; a predicted point is right when it is within the tolerance of the
ground truth at that row, absent points on both sides counting as a match (both are set to -100); a
ground-truth lane is matched when the best prediction gets at least 85 % of the rows; accuracy is the sum
of the best per-lane accuracies over min(4, #gt) (the worst one dropped when there are more than 4
lanes), FP = unmatched predictions / #pred, FN = unmatched ground truth / min(4, #gt) (one forgiven when
there are more than 4). More than #gt + 2 predicted lanes, or a run time above 200 ms, scores (0, 0, 1).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["LaneScores", "PIXEL_THRESH", "POINT_THRESH", "decode_ufld", "frame_scores", "tusimple_scores"]

PIXEL_THRESH = 20.0
POINT_THRESH = 0.85


@dataclass(frozen=True)
class LaneScores:
    """Mean accuracy, FP and FN over the frames (fractions, as the official script prints them)."""

    accuracy: float
    fp: float
    fn: float
    frames: int

    def as_dict(self) -> dict[str, float]:
        return {"accuracy": self.accuracy, "fp": self.fp, "fn": self.fn, "frames": self.frames}


def _angle(xs: np.ndarray, ys: np.ndarray) -> float:
    keep = xs >= 0
    xs, ys = xs[keep], ys[keep]
    if len(xs) < 2:
        return 0.0
    if np.ptp(ys) == 0:
        return 0.0  # a degenerate fit; the official LinearRegression gives slope 0 here too
    return float(np.arctan(np.polyfit(ys, xs, 1)[0]))


def _line_accuracy(pred: np.ndarray, gt: np.ndarray, thresh: float) -> float:
    pred = np.where(pred >= 0, pred, -100.0)
    gt = np.where(gt >= 0, gt, -100.0)
    return float(np.sum(np.abs(pred - gt) < thresh)) / len(gt)


def frame_scores(
    pred: Sequence[Sequence[float]],
    gt: Sequence[Sequence[float]],
    y_samples: Sequence[float],
    run_time_ms: float = 0.0,
) -> tuple[float, float, float]:
    """(accuracy, fp, fn) of one frame, as the official ``LaneEval.bench``; lanes are x per y_sample."""
    ys = np.asarray(y_samples, dtype=np.float64)
    preds = [np.asarray(p, dtype=np.float64) for p in pred]
    gts = [np.asarray(g, dtype=np.float64) for g in gt]
    if any(len(p) != len(ys) for p in preds):
        raise ValueError(f"every predicted lane needs one x per y_sample ({len(ys)})")
    if run_time_ms > 200 or len(gts) + 2 < len(preds):
        return 0.0, 0.0, 1.0
    line_accs, matched, fn = [], 0, 0
    for g in gts:
        thresh = PIXEL_THRESH / np.cos(_angle(g, ys))
        best = max((_line_accuracy(p, g, thresh) for p in preds), default=0.0)
        if best < POINT_THRESH:
            fn += 1
        else:
            matched += 1
        line_accs.append(best)
    fp = len(preds) - matched
    if len(gts) > 4 and fn > 0:
        fn -= 1
    total = sum(line_accs)
    if len(gts) > 4:
        total -= min(line_accs)
    denom = max(min(4.0, len(gts)), 1.0)
    return total / denom, (fp / len(preds) if preds else 0.0), fn / denom


def tusimple_scores(
    preds: Sequence[Sequence[Sequence[float]]],
    gts: Sequence[Sequence[Sequence[float]]],
    y_samples: Sequence[Sequence[float]],
) -> LaneScores:
    """Mean :func:`frame_scores` over frames (``preds[i]``, ``gts[i]``, ``y_samples[i]`` per frame)."""
    if not len(preds) == len(gts) == len(y_samples):
        raise ValueError(
            f"need one prediction per frame: {len(preds)} preds, {len(gts)} gts, {len(y_samples)} ys"
        )
    if not gts:
        raise ValueError("no frames to score")
    totals = np.zeros(3)
    for p, g, y in zip(preds, gts, y_samples):
        totals += frame_scores(p, g, y)
    acc, fp, fn = totals / len(gts)
    return LaneScores(float(acc), float(fp), float(fn), len(gts))


def decode_ufld(
    cls_out: torch.Tensor | np.ndarray,
    griding_num: int,
    image_width: int = 1280,
    min_points: int = 3,
) -> list[list[float]]:
    """TuSimple lanes (x per row anchor, -2 absent) from one UFLD output ``(griding_num + 1, rows, lanes)``.

    As UFLD's TuSimple test: a row has no point where the "no lane" class wins, otherwise x is the
    softmax expectation over the cells, here placed at the cell centre
    ``(E[cell] + 0.5) * (W - 1) / (griding_num - 1)`` in original-image pixels (the inverse of
    :func:`~fxprune.models.tusimple.ufld_targets`); lanes with fewer than ``min_points`` points are dropped.
    """
    out = torch.as_tensor(cls_out).detach().float()
    if out.dim() != 3 or out.shape[0] != griding_num + 1:
        raise ValueError(f"expected a (griding_num + 1, rows, lanes) output, got {tuple(out.shape)}")
    prob = torch.softmax(out[:griding_num], dim=0)
    cells = torch.arange(griding_num, dtype=prob.dtype).view(-1, 1, 1)
    loc = (prob * cells).sum(0)
    present = out.argmax(0) != griding_num
    xs = (loc + 0.5) * (image_width - 1) / (griding_num - 1)
    lanes = []
    for lane in range(out.shape[2]):
        if int(present[:, lane].sum()) < min_points:
            continue
        lanes.append(
            [float(x) if ok else -2.0 for x, ok in zip(xs[:, lane].tolist(), present[:, lane].tolist())]
        )
    return lanes
