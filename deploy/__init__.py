"""Deployment: ONNX export, INT8 quantization, latency backends, channel alignment, latency-aware pruning."""

from .alignment import default_round_to, int8_multiple
from .artifacts import run_artifact
from .backends import BackendUnavailable, get_backend, list_backends
from .budget import BudgetResult, plan_for_latency
from .calibration import load_calibration
from .flops_planner import FlopsLatencyPlanner, FlopsLatencyResult, plan_flops_by_latency
from .latency_planner import LatencyPlanner, prune
from .lut import LatencyTable
from .onnx_export import ExportResult, export_onnx
from .quantize import QuantizeResult, quantize
from .runtime_latency import Measurement, measure_latency, speedup
from .sweep import latency_sweep, slower_points

__all__ = [
    "BackendUnavailable",
    "BudgetResult",
    "ExportResult",
    "FlopsLatencyPlanner",
    "FlopsLatencyResult",
    "LatencyPlanner",
    "LatencyTable",
    "Measurement",
    "QuantizeResult",
    "default_round_to",
    "export_onnx",
    "get_backend",
    "int8_multiple",
    "latency_sweep",
    "list_backends",
    "load_calibration",
    "measure_latency",
    "plan_flops_by_latency",
    "plan_for_latency",
    "prune",
    "quantize",
    "run_artifact",
    "slower_points",
    "speedup",
]
