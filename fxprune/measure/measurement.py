"""One measurement type for every latency figure (CPU eager or a deployment runtime), and its statistics."""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["SLOWER_THAN_DENSE_TOLERANCE", "Measurement", "is_slower", "percentile", "speedup"]

SLOWER_THAN_DENSE_TOLERANCE = 0.03
"""A pruned model counts as slower than dense when its speed-up is below ``1 - tolerance`` (noise margin)."""


@dataclass
class Measurement:
    """Latency of one model (milliseconds per call) and the conditions it was taken in.

    ``repeat_medians``: the median of each interleaved round (see :func:`speedup`); ``notes``: anything the
    runtime reported (e.g. CUDA graph replay).
    """

    name: str
    backend: str
    precision: str
    batch: int
    threads: int
    warmup: int
    iters: int
    repeats: int
    device: str
    median_ms: float
    p90_ms: float
    mean_ms: float
    repeat_medians: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def throughput(self) -> float:
        """Items (batch elements) per second at the median latency."""
        return self.batch * 1000.0 / self.median_ms

    def conditions(self) -> str:
        """One line: backend, precision, batch, threads, warm-up, iterations, device."""
        return (
            f"{self.backend} {self.precision}, batch {self.batch}, {self.threads} thread(s), warm-up "
            f"{self.warmup}, {self.repeats}x{self.iters} timed calls interleaved, {self.device}"
        )

    def as_dict(self) -> dict[str, Any]:
        """Plain dict view (for JSON or Markdown reports), with the throughput."""
        d = asdict(self)
        d["throughput"] = self.throughput
        return d

    @classmethod
    def from_samples(
        cls, samples: list[float], repeat_medians: list[float], **conditions: Any
    ) -> Measurement:
        """Median, p90 and mean of ``samples`` (ms), with the conditions given as keyword fields."""
        values = sorted(samples)
        return cls(
            median_ms=statistics.median(values),
            p90_ms=percentile(values, 90.0),
            mean_ms=statistics.fmean(values),
            repeat_medians=list(repeat_medians),
            **conditions,
        )


def percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values, ``q`` in [0, 100]."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def speedup(dense: Measurement, pruned: Measurement) -> float:
    """``dense / pruned`` latency: the median of the per-repetition ratios (robust to drifting load)."""
    pairs = list(zip(dense.repeat_medians, pruned.repeat_medians))
    if not pairs:
        return dense.median_ms / pruned.median_ms
    return statistics.median(a / b for a, b in pairs)


def is_slower(speedup_value: float, tolerance: float = SLOWER_THAN_DENSE_TOLERANCE) -> bool:
    """Whether a dense/pruned speed-up means the pruned model is slower than dense beyond the noise margin."""
    return speedup_value < 1.0 - tolerance
