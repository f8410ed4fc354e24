"""What a latency backend is: something that loads a model once and times calls of it."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

__all__ = ["Backend", "BackendUnavailable", "CpuRunner", "Runner", "Settings", "cpu_name"]


class BackendUnavailable(RuntimeError):
    """The backend's runtime (library, device or tool) is not installed or not usable here."""


@dataclass(frozen=True)
class Settings:
    """Run conditions shared by every backend."""

    precision: str = "fp32"
    threads: int = 1
    device_index: int = 0
    cuda_graphs: bool = True
    workdir: Path | None = None


class Runner:
    """A loaded model bound to fixed inputs. ``time(n)`` runs it ``n`` times and returns ms per call."""

    device_name: str = ""

    def __call__(self) -> None:
        raise NotImplementedError

    def time(self, n: int) -> list[float]:
        raise NotImplementedError

    def close(self) -> None:
        """Free what the runner holds (sessions, engines, device memory)."""


class CpuRunner(Runner):
    """Times each call with ``time.perf_counter_ns`` (synchronous CPU runtimes)."""

    def time(self, n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter_ns()
            self()
            out.append((time.perf_counter_ns() - start) / 1e6)
        return out


class Backend:
    """A runtime to measure latency on. Subclasses set the class attributes and implement ``load``.

    ``needs_onnx``: ``load`` receives the path of an ONNX file exported from the model (otherwise the
    ``nn.Module`` itself); ``file_suffixes``: the model files it also loads when given a path.
    ``precisions``: the precisions it accepts. ``int8_format``: the quantized file it runs for
    ``precision="int8"`` (``"onnx"``: a QDQ ONNX, ``"openvino"``: an INT8 IR; see
    ``fxprune.deploy.quantize``). ``requantize_convs``: whether its QDQ ONNX may carry the uint8 Q/DQ
    pairs added on convolution outputs (onnxruntime fuses them; TensorRT takes int8 zero-point-free
    pairs only, so its backends keep NNCF's file).
    """

    name: ClassVar[str] = ""
    device: ClassVar[str] = "cpu"
    needs_onnx: ClassVar[bool] = True
    file_suffixes: ClassVar[tuple[str, ...]] = (".onnx",)  # model files it loads as they are
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    int8_format: ClassVar[str | None] = None
    requantize_convs: ClassVar[bool] = True
    description: ClassVar[str] = ""

    def check(self) -> None:
        """Raise :class:`BackendUnavailable` with an install hint when the backend cannot run here."""

    def load(self, source: nn.Module | Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> Runner:
        raise NotImplementedError

    def export_dtype(self, precision: str) -> torch.dtype:
        """dtype of the exported ONNX model (float32 unless the runtime needs typed fp16 graphs)."""
        return torch.float32

    def validate(self, settings: Settings) -> None:
        if settings.precision not in self.precisions:
            raise ValueError(
                f"backend {self.name!r} supports precision {', '.join(self.precisions)}, "
                f"not {settings.precision!r}"
            )
        if settings.threads < 1:
            raise ValueError(f"threads must be >= 1, got {settings.threads}")


def cpu_name() -> str:
    """The CPU model name (from /proc/cpuinfo where available)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} cores)"
    except OSError:
        pass
    return platform.processor() or platform.machine()


def numpy_inputs(inputs: tuple[torch.Tensor, ...], names: list[str]) -> dict[str, Any]:
    """Feed dict for ONNX runtimes."""
    if len(names) != len(inputs):
        raise ValueError(f"the ONNX model has {len(names)} inputs, {len(inputs)} were given")
    return {n: t.detach().cpu().contiguous().numpy() for n, t in zip(names, inputs)}
