"""Report pieces for deployment runs: latency tables with their conditions, and latency-vs-ratio plots."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fxprune.measure import is_slower
from fxprune.report.markdown import new_axes, save_png

from .runtime_latency import Measurement, speedup
from .sweep import SweepPoint

__all__ = ["measurement_rows", "plot_sweep", "sweep_rows"]


def measurement_rows(
    results: Mapping[str, Mapping[str, Measurement]], reference: str = "dense"
) -> list[dict]:
    """One row per backend and model: median, p90, throughput, speed-up over ``reference``, conditions."""
    rows = []
    for backend, by_name in results.items():
        ref = by_name.get(reference)
        for name, m in by_name.items():
            rows.append(
                {
                    "backend": backend,
                    "model": name,
                    "median ms": f"{m.median_ms:.3g}",
                    "p90 ms": f"{m.p90_ms:.3g}",
                    "items/s": f"{m.throughput:.3g}",
                    "speed-up": "" if ref is None or m is ref else f"{speedup(ref, m):.2f}x",
                    "conditions": m.conditions(),
                }
            )
    return rows


def sweep_rows(points: Sequence[SweepPoint]) -> list[dict[str, Any]]:
    """Markdown rows of a ratio sweep."""
    return [
        {
            "ratio": f"{p.ratio:g}",
            "FLOPs x": f"{p.flops_ratio:.2f}",
            "params x": f"{p.params_ratio:.2f}",
            "dense ms": f"{p.dense_ms:.3g}",
            "pruned ms": f"{p.pruned_ms:.3g}",
            "speed-up": f"{p.speedup:.2f}x",
            "slower than dense": "yes" if is_slower(p.speedup) else "",
        }
        for p in points
    ]


def plot_sweep(
    points: Sequence[SweepPoint],
    path: str | os.PathLike[str],
    *,
    title: str = "Latency against pruning ratio",
) -> Path:
    """PNG of measured speed-up and FLOPs reduction against the pruning ratio (1x line = dense)."""
    fig, ax = new_axes((6.5, 4.2))
    xs = [p.ratio for p in points]
    ax.plot(xs, [p.speedup for p in points], "o-", color="#1f5f99", label="measured speed-up")
    ax.plot(xs, [p.flops_ratio for p in points], "s--", color="#9bb7d4", label="FLOPs reduction")
    ax.axhline(1.0, color="#b22222", linewidth=1, label="dense")
    ax.set_xlabel("fraction of channels removed per group")
    ax.set_ylabel("dense / pruned")
    return save_png(fig, ax, path, title)
