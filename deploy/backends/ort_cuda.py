"""onnxruntime-gpu with the CUDA execution provider (``backend="ort-cuda"``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from .base import Backend, BackendUnavailable, CpuRunner, Settings, numpy_inputs
from .ort import ort_session
from .registry import register_backend

__all__ = ["OrtCuda"]


class _OrtCudaRunner(CpuRunner):
    """I/O bound on the GPU; ``run_with_iobinding`` returns once the GPU is done."""

    def __init__(self, session, feeds: dict[str, np.ndarray], device_id: int) -> None:
        import onnxruntime as ort

        self.session = session
        self.binding = session.io_binding()
        for name, arr in feeds.items():
            self.binding.bind_ortvalue_input(name, ort.OrtValue.ortvalue_from_numpy(arr, "cuda", device_id))
        for out in session.get_outputs():
            self.binding.bind_output(out.name, "cuda", device_id)
        self.device_name = _gpu_name(device_id)

    def __call__(self) -> None:
        self.session.run_with_iobinding(self.binding)

    def close(self) -> None:
        self.session = self.binding = None


def _gpu_name(index: int) -> str:
    if torch.cuda.is_available():
        return torch.cuda.get_device_name(index)
    return f"CUDA device {index}"


@register_backend
class OrtCuda(Backend):
    name = "ort-cuda"
    device = "cuda"
    precisions = ("fp32", "fp16")
    description = "onnxruntime-gpu, CUDA execution provider"

    def check(self) -> None:
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise BackendUnavailable("onnxruntime-gpu is not installed: pip install onnxruntime-gpu") from e
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise BackendUnavailable(
                "onnxruntime has no CUDAExecutionProvider here (available: "
                f"{', '.join(ort.get_available_providers())}); install onnxruntime-gpu instead of "
                "onnxruntime and run on a machine with an NVIDIA GPU and driver"
            )

    def export_dtype(self, precision: str) -> torch.dtype:
        return torch.float16 if precision == "fp16" else torch.float32

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> _OrtCudaRunner:
        providers = [("CUDAExecutionProvider", {"device_id": settings.device_index}), "CPUExecutionProvider"]
        sess = ort_session(source, settings.threads, providers)
        if "CUDAExecutionProvider" not in sess.get_providers():
            raise BackendUnavailable("onnxruntime could not create the CUDA execution provider")
        dtype = self.export_dtype(settings.precision)
        feeds = numpy_inputs(tuple(t.to(dtype) for t in inputs), [i.name for i in sess.get_inputs()])
        return _OrtCudaRunner(sess, feeds, settings.device_index)
