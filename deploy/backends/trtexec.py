"""TensorRT through NVIDIA's ``trtexec`` tool (``backend="trtexec"``), when it is on PATH."""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .base import Backend, BackendUnavailable, Runner, Settings
from .registry import register_backend

__all__ = ["Trtexec", "trtexec_command"]


def trtexec_command(onnx: Path, precision: str, iters: int, times_json: Path, cuda_graphs: bool) -> list[str]:
    """The ``trtexec`` command line that builds ``onnx`` and times ``iters`` inferences."""
    cmd = [
        shutil.which("trtexec") or "trtexec",
        f"--onnx={onnx}",
        f"--iterations={iters}",
        "--warmUp=200",
        "--duration=0",
        f"--exportTimes={times_json}",
        "--noDataTransfers",
    ]
    if precision == "fp16":
        cmd.append("--fp16")
    if cuda_graphs:
        cmd.append("--useCudaGraph")
    return cmd


class _TrtexecRunner(Runner):
    def __init__(self, onnx: Path, settings: Settings) -> None:
        self.onnx, self.settings = onnx, settings
        self.device_name = (
            torch.cuda.get_device_name(settings.device_index) if torch.cuda.is_available() else "GPU"
        )

    def __call__(self) -> None:  # warm-up happens inside trtexec
        pass

    def time(self, n: int) -> list[float]:
        with tempfile.TemporaryDirectory() as tmp:
            times = Path(tmp) / "times.json"
            cmd = trtexec_command(self.onnx, self.settings.precision, n, times, self.settings.cuda_graphs)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                raise RuntimeError(
                    f"trtexec failed ({proc.returncode}): {proc.stdout[-2000:]}{proc.stderr[-2000:]}"
                )
            return [float(t["latencyMs"]) for t in json.loads(times.read_text())]


@register_backend
class Trtexec(Backend):
    name = "trtexec"
    device = "cuda"
    precisions = ("fp32", "fp16")
    description = "TensorRT's trtexec tool (engine built and timed by trtexec)"

    def check(self) -> None:
        if shutil.which("trtexec") is None:
            raise BackendUnavailable(
                "trtexec is not on PATH; it ships with the TensorRT tar/deb packages from NVIDIA "
                "(https://developer.nvidia.com/tensorrt), or use backend 'trt' (TensorRT Python API)"
            )

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> _TrtexecRunner:
        return _TrtexecRunner(Path(source), settings)
