"""Model cost measurements: FLOPs, parameter counts and CPU latency."""

from fxprune.measure.flops import count_flops, count_params
from fxprune.measure.latency import LatencyResult, measure_cpu_latency

__all__ = ["LatencyResult", "count_flops", "count_params", "measure_cpu_latency"]
