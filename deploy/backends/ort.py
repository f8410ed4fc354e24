"""onnxruntime on the CPU (``backend="ort"``)."""

from __future__ import annotations

from pathlib import Path

import torch

from .base import Backend, BackendUnavailable, CpuRunner, Settings, cpu_name, numpy_inputs
from .registry import register_backend

__all__ = ["OrtCpu", "ort_session"]


def ort_session(path: Path, threads: int, providers: list):
    """An onnxruntime session with ``threads`` intra-op threads, one inter-op thread, full optimisation."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=providers)


class _OrtRunner(CpuRunner):
    def __init__(self, session, feeds: dict) -> None:
        self.session, self.feeds = session, feeds
        self.device_name = cpu_name()

    def __call__(self) -> None:
        self.session.run(None, self.feeds)

    def close(self) -> None:
        self.session = None


@register_backend
class OrtCpu(Backend):
    name = "ort"
    device = "cpu"
    precisions = ("fp32", "int8")
    int8_format = "onnx"  # QDQ pairs fuse into onnxruntime's INT8 kernels (QLinearConv, ...)
    description = "onnxruntime, CPU execution provider"

    def check(self) -> None:
        try:
            import onnxruntime  # noqa: F401
        except ImportError as e:
            raise BackendUnavailable("onnxruntime is not installed: pip install onnxruntime") from e

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> _OrtRunner:
        sess = ort_session(source, settings.threads, ["CPUExecutionProvider"])
        feeds = numpy_inputs(inputs, [i.name for i in sess.get_inputs()])
        return _OrtRunner(sess, feeds)
