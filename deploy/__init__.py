"""Deployment: ONNX export, latency backends, channel alignment and latency-aware pruning."""

from .backends import BackendUnavailable, get_backend, list_backends
from .latency import Measurement, measure_latency, speedup
from .onnx_export import ExportResult, export_onnx

__all__ = [
    "BackendUnavailable",
    "ExportResult",
    "Measurement",
    "export_onnx",
    "get_backend",
    "list_backends",
    "measure_latency",
    "speedup",
]
