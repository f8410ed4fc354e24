"""Interleaved CPU latency measurement for comparing several models fairly in one run."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack

import torch
from torch import nn

from ..capture.inputs import ExampleInputs, as_args_kwargs, eval_mode
from .measurement import Measurement

__all__ = ["interleaved_rounds", "measure_cpu_latency", "precision_of"]

_PRECISIONS = {torch.float32: "fp32", torch.float16: "fp16", torch.bfloat16: "bf16", torch.float64: "fp64"}


def precision_of(model: nn.Module) -> str:
    """``"fp32"``, ``"fp16"``, ``"bf16"``... after the first floating-point parameter (``"fp32"`` if none)."""
    dtype = next((p.dtype for p in model.parameters() if p.is_floating_point()), torch.float32)
    return _PRECISIONS.get(dtype, str(dtype).removeprefix("torch."))


def interleaved_rounds(
    timers: Mapping[str, Callable[[int], list[float]]], iters: int, repeats: int
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """Call ``timers[name](iters)`` for every name in turn, ``repeats`` rounds, the order rotated each round.

    Round-robin timing exposes all models to the same machine noise, so their ratios are meaningful. The
    garbage collector is off while timing. Returns every sample (ms) and each round's median, per name.
    """
    names = list(timers)
    samples: dict[str, list[float]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        for rep in range(repeats):
            shift = rep % len(names)
            for name in names[shift:] + names[:shift]:
                t = timers[name](iters)
                samples[name] += t
                medians[name].append(statistics.median(t))
    finally:
        if was_enabled:
            gc.enable()
    return samples, medians


def measure_cpu_latency(
    models: Mapping[str, nn.Module],
    example_inputs: ExampleInputs,
    *,
    threads: int | None = None,
    warmup: int = 5,
    iters: int = 20,
    repeats: int = 5,
) -> dict[str, Measurement]:
    """Time several CPU models interleaved: each repetition runs ``iters`` calls of every model in turn.

    Round-robin timing (with the model order rotated every repetition) exposes all models to the same
    machine noise, so latency ratios between them are meaningful. Runs under ``torch.inference_mode()``
    in eval mode; ``torch.set_num_threads(threads)`` is applied if given and restored afterwards.
    Results are :class:`fxprune.measure.Measurement` with backend ``"torch"`` and device ``"cpu"``.
    """
    if not models:
        raise ValueError("measure_cpu_latency needs at least one model")
    if iters < 1 or repeats < 1 or warmup < 0:
        raise ValueError("iters and repeats must be >= 1 and warmup >= 0")
    args, kwargs = as_args_kwargs(example_inputs)
    names = list(models)
    prev_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    used_threads = torch.get_num_threads()

    def timer(model: nn.Module) -> Callable[[int], list[float]]:
        def run(n: int) -> list[float]:
            out = []
            for _ in range(n):
                start = time.perf_counter_ns()
                model(*args, **kwargs)
                out.append((time.perf_counter_ns() - start) / 1e6)
            return out

        return run

    try:
        with ExitStack() as stack, torch.inference_mode():
            for name in names:
                stack.enter_context(eval_mode(models[name]))
            for name in names:
                for _ in range(warmup):
                    models[name](*args, **kwargs)
            samples, medians = interleaved_rounds(
                {name: timer(models[name]) for name in names}, iters, repeats
            )
    finally:
        if threads is not None:
            torch.set_num_threads(prev_threads)
    first = next((t for t in [*args, *kwargs.values()] if isinstance(t, torch.Tensor)), None)
    batch = int(first.shape[0]) if first is not None and first.dim() else 1
    return {
        name: Measurement.from_samples(
            samples[name],
            medians[name],
            name=name,
            backend="torch",
            precision=precision_of(models[name]),
            batch=batch,
            threads=used_threads,
            warmup=warmup,
            iters=iters,
            repeats=repeats,
            device="cpu",
        )
        for name in names
    }
