"""Deployment: ONNX export, latency backends, channel alignment and latency-aware pruning."""

from .alignment import default_round_to
from .backends import BackendUnavailable, get_backend, list_backends
from .budget import BudgetResult, plan_for_latency
from .latency import Measurement, measure_latency, speedup
from .lut import LatencyTable
from .onnx_export import ExportResult, export_onnx
from .sweep import latency_sweep, slower_points

__all__ = [
    "BackendUnavailable",
    "BudgetResult",
    "ExportResult",
    "LatencyTable",
    "Measurement",
    "default_round_to",
    "export_onnx",
    "get_backend",
    "latency_sweep",
    "list_backends",
    "measure_latency",
    "plan_for_latency",
    "slower_points",
    "speedup",
]
