"""Model cost measurements: FLOPs, parameter counts and CPU latency, and the one latency result type."""

from .cpu_latency import interleaved_rounds, measure_cpu_latency
from .flops import count_flops, count_params, try_count_flops
from .measurement import SLOWER_THAN_DENSE_TOLERANCE, Measurement, is_slower, percentile, speedup

__all__ = [
    "SLOWER_THAN_DENSE_TOLERANCE",
    "Measurement",
    "count_flops",
    "count_params",
    "interleaved_rounds",
    "is_slower",
    "measure_cpu_latency",
    "percentile",
    "speedup",
    "try_count_flops",
]
