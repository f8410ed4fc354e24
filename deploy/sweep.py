"""Latency against pruning ratio: dense and every pruned variant timed side by side on one backend."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from torch import nn

from fxprune.analysis import analyze
from fxprune.measure import SLOWER_THAN_DENSE_TOLERANCE, count_flops, count_params, is_slower
from fxprune.plan import make_plan
from fxprune.targets import slimmed_copy

from .alignment import default_round_to
from .runtime_latency import Measurement, measure_latency, speedup

__all__ = ["SweepPoint", "latency_sweep", "slower_points"]

DEFAULT_RATIOS = (0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


@dataclass
class SweepPoint:
    """One pruning ratio: size and FLOPs reductions, and the measured speed-up over dense."""

    ratio: float
    flops_ratio: float
    params_ratio: float
    speedup: float
    dense_ms: float
    pruned_ms: float
    round_to: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def latency_sweep(
    model: nn.Module,
    example_inputs: Any,
    ratios: tuple[float, ...] = DEFAULT_RATIOS,
    backend: str = "ort",
    *,
    importance: Any = "l2",
    round_to: int | None = None,
    precision: str = "fp32",
    calibration: Iterable[Any] | None = None,
    **measure_kw: Any,
) -> tuple[list[SweepPoint], Measurement]:
    """Prune a copy of ``model`` at every ratio (``round_to`` defaults to the backend's alignment for
    ``precision``) and time dense and all pruned copies interleaved in one run. Returns the points and the
    dense measurement.

    ``precision="int8"`` (ort, openvino, trt, trtexec): dense and every pruned copy are quantized with NNCF
    from the same ``calibration`` batches (default: the example inputs, with a warning: the timing holds,
    the accuracy of such files does not), then timed as INT8 files; ``round_to`` defaults to the INT8
    multiple (:func:`fxprune.deploy.int8_multiple`)."""
    if round_to is None:
        round_to = default_round_to(backend, precision)
    analysis = analyze(copy.deepcopy(model), example_inputs)
    dense = analysis.model.eval()
    flops, params = count_flops(dense, example_inputs), count_params(dense)
    variants: dict[str, nn.Module] = {"dense": dense}
    scores = analysis.scores(importance)
    for r in ratios:
        variants[f"{r:g}"] = slimmed_copy(analysis, make_plan(analysis.groups, scores, r, round_to=round_to))
    res = measure_latency(
        variants, example_inputs, backend, precision=precision, calibration=calibration, **measure_kw
    )
    points = []
    for r in ratios:
        m = variants[f"{r:g}"]
        points.append(
            SweepPoint(
                r,
                flops / max(count_flops(m, example_inputs), 1),
                params / max(count_params(m), 1),
                speedup(res["dense"], res[f"{r:g}"]),
                res["dense"].median_ms,
                res[f"{r:g}"].median_ms,
                round_to,
            )
        )
    return points, res["dense"]


def slower_points(
    points: list[SweepPoint], tolerance: float = SLOWER_THAN_DENSE_TOLERANCE
) -> list[SweepPoint]:
    """Sweep points whose pruned model is slower than dense by more than ``tolerance`` (noise margin)."""
    return [p for p in points if is_slower(p.speedup, tolerance)]
