"""Latency on deployment runtimes: several models timed interleaved on one backend, with their conditions.

``Measurement`` and ``speedup`` are defined in ``fxprune.measure`` (one result type for every latency
figure) and re-exported here. ``precision="int8"`` times quantized files: models given as modules are
quantized with NNCF first (``fxprune.deploy.quantize``, into the backend's ``int8_format``).
"""

from __future__ import annotations

import copy
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from fxprune.capture import as_args_kwargs
from fxprune.measure import Measurement, interleaved_rounds, speedup

from .backends import Backend, Settings, get_backend
from .backends.base import Runner
from .onnx_export import export_onnx

__all__ = ["Measurement", "measure_latency", "speedup"]

Source = nn.Module | str | Path


def _inputs(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    args, kwargs = as_args_kwargs(example_inputs)
    if kwargs:
        raise ValueError("latency backends need positional example inputs (a tensor or a tuple of tensors)")
    return tuple(args)


NO_CALIBRATION_WARNING = (
    "no calibration data given: quantizing to INT8 with the example inputs as the only calibration "
    "batch. The files time like any INT8 model, but their accuracy is not representative; pass "
    "calibration=... (batches shaped like the example inputs) for deployable INT8 models"
)


class Int8Quantizer:
    """Quantizes the modules of a latency run for ``backend`` (its ``int8_format``), all from one
    calibration set: up to ``subset_size`` batches of ``calibration``, or, when it is None (with a
    warning), each model's own example inputs (a layer table times layers with different input shapes)."""

    def __init__(
        self,
        backend: Backend,
        inputs: tuple,
        calibration: Iterable[Any] | None,
        subset_size: int,
        input_names: list[str] | None = None,
    ):
        from .calibration import CalibrationBatches

        if backend.int8_format is None:
            raise ValueError(f"backend {backend.name!r} has no INT8 path")
        self.origin, self.own_inputs = "", calibration is None
        if calibration is None:
            warnings.warn(NO_CALIBRATION_WARNING, UserWarning, stacklevel=3)
            calibration, self.origin = [inputs], " (the example inputs)"
        elif isinstance(calibration, Iterator):  # a generator is read once, for every model
            calibration = list(calibration)
        self.backend, self.calibration = backend, calibration
        self.samples = CalibrationBatches(calibration, inputs, None, input_names or ()).count(subset_size)
        if self.samples == 0:
            raise ValueError("the calibration data gave no input batches")

    def __call__(self, model: nn.Module, inputs: tuple, path: Path) -> Path:
        from .quantize import quantize

        fmt = self.backend.int8_format
        out = path.with_suffix(".xml" if fmt == "openvino" else ".onnx")
        extra = {"requantize_convs": self.backend.requantize_convs} if fmt == "onnx" else {}
        calibration = [inputs] if self.own_inputs else self.calibration
        return quantize(model, inputs, calibration, fmt, out, subset_size=self.samples, **extra).path


def _file(backend: Backend, source: str | Path, precision: str) -> Path:
    from .quantize import is_quantized

    path = Path(source)
    if not path.is_file():
        raise FileNotFoundError(f"{path}")
    if backend.needs_onnx and path.suffix not in backend.file_suffixes:
        kinds = " or ".join(backend.file_suffixes)
        raise ValueError(f"backend {backend.name!r} needs a {kinds} file or a PyTorch model, got {path}")
    if precision == "int8" and not is_quantized(path):
        raise ValueError(
            f"precision='int8' times quantized files, and {path} is not quantized; pass the model itself "
            "(it is quantized with calibration=...) or a file from fxprune.deploy.quantize"
        )
    return path


def _prepare(
    backend: Backend,
    name: str,
    source: Source,
    inputs: tuple,
    settings: Settings,
    tmp: Path,
    int8: Int8Quantizer | None = None,
):
    """What the backend loads: the module itself, or an ONNX file (exported here when given a module;
    quantized by ``int8`` for precision int8)."""
    if isinstance(source, (str, Path)):
        return _file(backend, source, settings.precision)
    if int8 is not None:
        return int8(source, inputs, tmp / f"{name.replace('/', '_')}-int8")
    if not backend.needs_onnx:
        return source
    dtype = backend.export_dtype(settings.precision)
    model, xs = source, inputs
    if dtype != torch.float32:
        dev = "cuda" if torch.cuda.is_available() else "cpu"
        model = copy.deepcopy(source).to(dev, dtype)
        xs = tuple(t.to(dev, dtype) if t.is_floating_point() else t.to(dev) for t in inputs)
    path = tmp / f"{name.replace('/', '_')}.onnx"
    export_onnx(model, xs, path, parity=False)
    return path


def _auto_iters(runners: dict[str, Runner], repeats: int, budget_s: float) -> int:
    per_call = 0.0
    for r in runners.values():
        start = time.perf_counter()
        r()
        per_call += time.perf_counter() - start
    return max(3, min(100, int(budget_s / (repeats * max(per_call, 1e-6)))))


def measure_latency(
    sources: Mapping[str, Source],
    example_inputs: Any,
    backend: str | Backend = "ort",
    *,
    precision: str = "fp32",
    threads: int = 1,
    warmup: int = 5,
    iters: int | None = None,
    repeats: int = 5,
    budget_s: float = 10.0,
    device_index: int = 0,
    cuda_graphs: bool = True,
    workdir: str | Path | None = None,
    inputs_of: Mapping[str, Any] | None = None,
    calibration: Iterable[Any] | None = None,
    subset_size: int = 300,
) -> dict[str, Measurement]:
    """Time every source (``nn.Module`` or ONNX path) on ``backend``, interleaved.

    Each of ``repeats`` rounds runs ``iters`` timed calls of every model in turn (order rotated per
    round) after ``warmup`` calls each, so all models see the same machine noise; compare them with
    :func:`speedup`. ``iters=None`` picks a count that fits about ``budget_s`` seconds of timing.
    ``threads`` is the CPU runtime's intra-op thread count (reported with every result).
    ``inputs_of`` gives some sources their own inputs (e.g. layers of different shapes timed together).
    ``precision="int8"`` (backends with an ``int8_format``: ort, openvino, trt, trtexec): files must be
    quantized already; modules are quantized here from up to ``subset_size`` batches of ``calibration``
    (default: the example inputs, with a warning: fine for timing, not for accuracy).
    """
    if not sources:
        raise ValueError("measure_latency needs at least one model")
    if repeats < 1 or warmup < 0 or (iters is not None and iters < 1):
        raise ValueError("repeats and iters must be >= 1 and warmup >= 0")
    be = get_backend(backend)
    settings = Settings(precision, threads, device_index, cuda_graphs)
    be.validate(settings)
    be.check()
    inputs = _inputs(example_inputs)
    batch = int(inputs[0].shape[0]) if inputs and inputs[0].dim() else 1
    int8 = None
    modules = [s for s in sources.values() if isinstance(s, nn.Module)]
    if precision == "int8" and modules:
        from .calibration import forward_input_names

        int8 = Int8Quantizer(be, inputs, calibration, subset_size, forward_input_names(modules[0]))
    runners: dict[str, Runner] = {}
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        try:
            for name, source in sources.items():
                own = _inputs(inputs_of[name]) if inputs_of and name in inputs_of else inputs
                loaded = _prepare(be, name, source, own, settings, Path(tmp), int8)
                runners[name] = be.load(loaded, own, settings)
            for r in runners.values():
                for _ in range(warmup):
                    r()
            n = iters if iters is not None else _auto_iters(runners, repeats, budget_s)
            samples, medians = interleaved_rounds({k: r.time for k, r in runners.items()}, n, repeats)
        finally:
            for r in runners.values():
                r.close()
    out = {}
    for name, r in runners.items():
        notes = [f"CUDA graph capture failed: {r.graph_error}"] if getattr(r, "graph_error", None) else []
        if int8 is not None and isinstance(sources[name], nn.Module):
            notes.append(f"quantized by NNCF from {int8.samples} calibration batch(es){int8.origin}")
        if getattr(r, "graph", None) is not None:
            notes.append("CUDA graph replay")
        out[name] = Measurement.from_samples(
            samples[name],
            medians[name],
            name=name,
            backend=be.name,
            precision=precision,
            batch=batch,
            threads=threads,
            warmup=warmup,
            iters=n,
            repeats=repeats,
            device=r.device_name,
            notes=notes,
        )
    return out
