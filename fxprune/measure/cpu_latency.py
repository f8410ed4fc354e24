"""Interleaved CPU latency measurement for comparing several models fairly in one run."""

from __future__ import annotations

import gc
import statistics
import time
from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from fxprune.measure._inputs import ExampleInputs, eval_mode, split_inputs


@dataclass(frozen=True)
class LatencyResult:
    """Per-forward latency statistics in milliseconds over ``iters * repeats`` timed calls."""

    median_ms: float
    p90_ms: float
    mean_ms: float
    iters: int
    repeats: int
    threads: int
    warmup: int
    device: str

    def as_dict(self) -> dict[str, Any]:
        """Plain dict view (for JSON or Markdown reports)."""
        return asdict(self)


def _percentile(sorted_values: list[float], q: float) -> float:
    """Linear-interpolated percentile of already sorted values, ``q`` in [0, 100]."""
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


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
) -> dict[str, LatencyResult]:
    """Time several CPU models interleaved: each repetition runs ``iters`` calls of every model in turn.

    Round-robin timing (with the model order rotated every repetition) exposes all models to the same
    machine noise, so latency ratios between them are meaningful. Runs under ``torch.inference_mode()``
    in eval mode; ``torch.set_num_threads(threads)`` is applied if given and restored afterwards.
    """
    if not models:
        raise ValueError("measure_cpu_latency needs at least one model")
    if iters < 1 or repeats < 1 or warmup < 0:
        raise ValueError("iters and repeats must be >= 1 and warmup >= 0")
    args, kwargs = split_inputs(example_inputs)
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
            samples, _ = interleaved_rounds({name: timer(models[name]) for name in names}, iters, repeats)
    finally:
        if threads is not None:
            torch.set_num_threads(prev_threads)

    results: dict[str, LatencyResult] = {}
    for name in names:
        values = sorted(samples[name])
        results[name] = LatencyResult(
            median_ms=statistics.median(values),
            p90_ms=_percentile(values, 90.0),
            mean_ms=statistics.fmean(values),
            iters=iters,
            repeats=repeats,
            threads=used_threads,
            warmup=warmup,
            device="cpu",
        )
    return results
