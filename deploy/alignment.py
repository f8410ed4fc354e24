"""Channel alignment: the ``round_to`` each backend wants, and a check that pruning never slows a model down.

Runtimes pad channel counts to their vector or tensor-core width (NCHWc blocks of 8 floats on AVX2 and
16 on AVX-512 CPUs, multiples of 8 for FP16 and 32 for INT8 tensor cores), so a layer whose width is just
above a multiple costs as much as the next multiple; removing a few channels can even be slower than
dense when it breaks an aligned layout.
"""

from __future__ import annotations

import functools
from pathlib import Path

__all__ = ["cpu_vector_width", "default_round_to", "int8_multiple"]

_GPU_ROUND_TO = {"fp32": 8, "tf32": 8, "fp16": 8, "bf16": 8, "int8": 32}
_CPU_BACKENDS = ("ort", "openvino")


@functools.lru_cache(maxsize=1)
def cpu_vector_width() -> int:
    """fp32 lanes of the widest SIMD unit: 16 with AVX-512, 8 with AVX2, else 4 (SSE, NEON)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return 8
    if " avx512f" in flags:
        return 16
    if " avx2" in flags:
        return 8
    return 4


def int8_multiple(device: str = "cpu") -> int:
    """Channel multiple INT8 kernels want on ``device``: 4x the fp32 SIMD lanes on CPU (64 with AVX-512,
    32 with AVX2: VNNI packs four int8 values per 32-bit lane), 32 on GPU tensor cores (``"cuda"``).

    The CPU multiple is conservative: oneDNN's (OpenVINO) and onnxruntime's INT8 convolutions block output
    channels by the lane count and input channels by 4, so multiples of 16 also keep full vectors; on
    ResNet-50 at a quarter of the FLOPs, 64 still gave the largest INT8 speed-up on both runtimes
    (bench/RESULTS.md, INT8 section). 64 is also the row of an AMX INT8 tile (CPUs with ``amx_int8``),
    where narrow layers run far below the kernels' peak rate: there a FLOPs cut in 16- to 64-channel
    layers buys little time, and a latency-aware plan (``FlopsLatencyPlanner``) places it better."""
    if device == "cuda":
        return _GPU_ROUND_TO["int8"]
    if device != "cpu":
        raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
    return 4 * cpu_vector_width()


def default_round_to(backend: str, precision: str = "fp32", device: str | None = None) -> int:
    """Default ``round_to`` for ``backend`` and ``precision``.

    GPU backends (``trt``, ``trtexec``, ``ort-cuda``, torch on CUDA): 8 for fp32/fp16/bf16, 32 for int8.
    CPU backends: the fp32 vector width (16 with AVX-512, 8 with AVX2), 2x that for bf16, 4x for int8.
    """
    from .backends import get_backend

    be = get_backend(backend)
    dev = device or be.device
    if dev == "cuda":
        if precision not in _GPU_ROUND_TO:
            raise ValueError(
                f"no alignment rule for precision {precision!r}; known: {', '.join(_GPU_ROUND_TO)}"
            )
        return _GPU_ROUND_TO[precision]
    if precision == "int8":
        return int8_multiple("cpu")
    lanes = cpu_vector_width()
    return {"fp32": lanes, "bf16": 2 * lanes, "fp16": 2 * lanes}.get(precision, lanes)
