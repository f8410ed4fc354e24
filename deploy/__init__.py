"""Deployment: ONNX export, latency backends, channel alignment and latency-aware pruning."""

from .alignment import default_round_to
from .backends import BackendUnavailable, get_backend, list_backends
from .budget import BudgetResult, plan_for_latency
from .latency_planner import LatencyPlanner, prune
from .lut import LatencyTable
from .onnx_export import ExportResult, export_onnx
from .runtime_latency import Measurement, measure_latency, speedup
from .sweep import latency_sweep, slower_points

__all__ = [
    "BackendUnavailable",
    "BudgetResult",
    "ExportResult",
    "LatencyPlanner",
    "LatencyTable",
    "Measurement",
    "default_round_to",
    "export_onnx",
    "get_backend",
    "latency_sweep",
    "list_backends",
    "measure_latency",
    "plan_for_latency",
    "prune",
    "slower_points",
    "speedup",
]
