"""PyTorch itself: eager (``backend="torch"``) and ``torch.compile`` (``backend="torch-compile"``)."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from torch import nn

from .base import Backend, CpuRunner, Settings, cpu_name
from .cuda_timing import CudaEventRunner, require_cuda
from .registry import register_backend

__all__ = ["TorchCompile", "TorchEager"]

_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class _TorchCpuRunner(CpuRunner):
    def __init__(self, fn, inputs: tuple[torch.Tensor, ...], threads: int) -> None:
        self.fn, self.inputs, self.threads = fn, inputs, threads
        self.device_name = cpu_name()

    def __call__(self) -> None:
        with torch.inference_mode():
            self.fn(*self.inputs)

    def time(self, n: int) -> list[float]:
        prev = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return super().time(n)
        finally:
            torch.set_num_threads(prev)


class TorchEager(Backend):
    """``device="cuda"`` (default when a GPU is present) or ``"cpu"``; fp16/bf16 cast model and inputs."""

    name = "torch"
    needs_onnx = False
    precisions = ("fp32", "fp16", "bf16")
    description = "PyTorch eager"

    def __init__(self, device: str | None = None) -> None:
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        if self.device not in ("cpu", "cuda"):
            raise ValueError(f"torch backend device must be 'cpu' or 'cuda', got {self.device!r}")

    def check(self) -> None:
        if self.device == "cuda":
            require_cuda(f"backend {self.name!r} on device 'cuda'")

    def _wrap(self, model: nn.Module) -> nn.Module:
        return model

    def load(self, source: nn.Module | Path, inputs: tuple[torch.Tensor, ...], settings: Settings):
        if not isinstance(source, nn.Module):
            raise ValueError(f"backend {self.name!r} runs PyTorch models, not ONNX files ({source})")
        dtype = _DTYPES[settings.precision]
        dev = (
            torch.device(self.device, settings.device_index) if self.device == "cuda" else torch.device("cpu")
        )
        model = copy.deepcopy(source).eval().to(dev, dtype)
        xs = tuple(t.to(dev, dtype) if t.is_floating_point() else t.to(dev) for t in inputs)
        fn = self._wrap(model)
        if self.device == "cpu":
            return _TorchCpuRunner(fn, xs, settings.threads)
        stream = torch.cuda.Stream(dev)

        @torch.inference_mode()
        def launch() -> None:
            fn(*xs)

        with torch.cuda.stream(stream):
            for _ in range(3):
                launch()
        return CudaEventRunner(launch, stream, settings.device_index, graphs=settings.cuda_graphs)


class TorchCompile(TorchEager):
    """``torch.compile`` (inductor; ``mode="max-autotune-no-cudagraphs"`` on GPU, default on CPU)."""

    name = "torch-compile"
    description = "PyTorch, torch.compile (inductor)"

    def _wrap(self, model: nn.Module) -> nn.Module:
        mode = "max-autotune-no-cudagraphs" if self.device == "cuda" else None
        return torch.compile(model, mode=mode, dynamic=False)


register_backend(TorchEager)
register_backend(TorchCompile)
