"""OpenVINO runtime on the CPU (``backend="openvino"``), the runtime NNCF-compressed models target."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Backend, BackendUnavailable, CpuRunner, Settings, cpu_name, numpy_inputs
from .registry import register_backend

__all__ = ["OpenVinoCpu"]

_PRECISION = {"fp32": "f32", "bf16": "bf16", "int8": "f32"}  # int8: quantized ops in INT8, the rest f32


class _OpenVinoRunner(CpuRunner):
    def __init__(self, compiled, feeds: dict) -> None:
        self.compiled = compiled
        self.request = compiled.create_infer_request()
        self.feeds = feeds
        self.device_name = cpu_name()

    def __call__(self) -> None:
        self.request.infer(self.feeds)

    def close(self) -> None:
        self.request = self.compiled = None


@register_backend
class OpenVinoCpu(Backend):
    name = "openvino"
    device = "cpu"
    precisions = ("fp32", "bf16", "int8")
    int8_format = "openvino"
    file_suffixes = (".onnx", ".xml")  # ONNX, or an OpenVINO IR (e.g. from fxprune.deploy.quantize)
    description = "OpenVINO runtime, CPU plugin, latency hint, one stream"

    def check(self) -> None:
        try:
            import openvino  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("OpenVINO is not installed: pip install openvino") from e

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> _OpenVinoRunner:
        import openvino as ov

        core = ov.Core()
        model = core.read_model(str(source))
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(settings.threads),
            "INFERENCE_PRECISION_HINT": _PRECISION[settings.precision],
        }
        compiled = core.compile_model(model, "CPU", config)
        feeds = numpy_inputs(inputs, [p.get_any_name() for p in compiled.inputs])
        return _OpenVinoRunner(compiled, feeds)
