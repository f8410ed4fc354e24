"""TensorRT through NVIDIA's ``trtexec`` tool (``backend="trtexec"``), when it is on PATH.

Precision follows the TensorRT version, as in the Python backend: fp16 is ``--fp16`` on 10.x and an fp16
ONNX graph on 11.x (which removed every precision flag); INT8 is explicit quantization, a QDQ ONNX
(``fxprune.deploy.quantize(..., backend="onnx")``) built strongly typed: ``--stronglyTyped`` on 10.x
(weak typing is deprecated since 10.12 and ``--int8`` would add implicit INT8 tactics), nothing on 11.x
where every network is strongly typed.
"""

from __future__ import annotations

import functools
import json
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from .base import Backend, BackendUnavailable, Runner, Settings
from .registry import register_backend

__all__ = ["Trtexec", "trtexec_command", "trtexec_major"]


@functools.lru_cache(maxsize=1)
def trtexec_major() -> int:
    """Major TensorRT version of the ``trtexec`` on PATH (its banner reads ``[TensorRT v101300]``)."""
    proc = subprocess.run([shutil.which("trtexec") or "trtexec", "--help"], capture_output=True, text=True)
    found = re.search(r"TensorRT v(\d+)", proc.stdout + proc.stderr)
    if found is None:
        raise RuntimeError("could not read the TensorRT version from 'trtexec --help'")
    return int(found.group(1)) // 10000


def precision_flags(precision: str, major: int) -> list[str]:
    """trtexec flags for ``precision`` on TensorRT ``major`` (the ONNX file carries the rest)."""
    if precision == "int8":
        return ["--stronglyTyped"] if major < 11 else []
    if precision == "fp16" and major < 11:
        return ["--fp16"]
    return []


def trtexec_command(
    onnx: Path, precision: str, iters: int, times_json: Path, cuda_graphs: bool, major: int | None = None
) -> list[str]:
    """The ``trtexec`` command line that builds ``onnx`` and times ``iters`` inferences.

    ``major``: the TensorRT version (default: read from the installed trtexec). ``precision="int8"`` needs
    a QDQ ONNX (explicit quantization)."""
    if precision == "int8":
        from .tensorrt import has_qdq

        if not has_qdq(onnx):
            raise ValueError(
                f"{onnx} has no QuantizeLinear/DequantizeLinear nodes: TensorRT INT8 needs a QDQ ONNX "
                "(fxprune.deploy.quantize(model, inputs, calibration, backend='onnx'))"
            )
    major = trtexec_major() if major is None else major
    cmd = [
        shutil.which("trtexec") or "trtexec",
        f"--onnx={onnx}",
        f"--iterations={iters}",
        "--warmUp=200",
        "--duration=0",
        f"--exportTimes={times_json}",
        "--noDataTransfers",
    ]
    cmd += precision_flags(precision, major)
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
    precisions = ("fp32", "fp16", "int8")
    int8_format = "onnx"
    requantize_convs = False  # TensorRT rejects uint8 activations
    description = "TensorRT's trtexec tool (engine built and timed by trtexec)"

    def check(self) -> None:
        if shutil.which("trtexec") is None:
            raise BackendUnavailable(
                "trtexec is not on PATH; it ships with the TensorRT tar/deb packages from NVIDIA "
                "(https://developer.nvidia.com/tensorrt), or use backend 'trt' (TensorRT Python API)"
            )

    def export_dtype(self, precision: str) -> torch.dtype:
        return torch.float16 if precision == "fp16" and trtexec_major() >= 11 else torch.float32

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> _TrtexecRunner:
        return _TrtexecRunner(Path(source), settings)
