"""Tests for FLOP/parameter counting and interleaved CPU latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.measure import (
    Measurement,
    count_flops,
    count_params,
    is_slower,
    measure_cpu_latency,
    percentile,
    speedup,
)


def _stack(width: int) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(width, width, 1, bias=False),
        nn.ReLU(),
        nn.Conv2d(width, width, 1, bias=False),
    )


def test_conv_flops_exact() -> None:
    conv = nn.Conv2d(3, 8, 3, padding=1)
    assert count_flops(conv, torch.randn(1, 3, 8, 8)) == 2 * 3 * 8 * 9 * 64


def test_linear_flops_exact_and_input_forms() -> None:
    lin = nn.Linear(16, 4)
    x = torch.randn(2, 16)
    expected = 2 * 2 * 16 * 4
    assert count_flops(lin, x) == expected
    assert count_flops(lin, (x,)) == expected
    assert count_flops(lin, [x]) == expected
    assert count_flops(lin, {"input": x}) == expected


def test_twice_as_wide_is_four_times_flops() -> None:
    narrow = count_flops(_stack(8), torch.randn(1, 8, 16, 16))
    wide = count_flops(_stack(16), torch.randn(1, 16, 16, 16))
    assert narrow > 0
    assert wide == pytest.approx(4 * narrow, rel=1e-6)


def test_count_flops_restores_training_mode_and_no_grad() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Dropout())
    model.train()
    model[2].eval()  # mixed modes must be restored exactly
    stats_before = model[1].running_mean.clone()
    count_flops(model, torch.randn(2, 3, 8, 8))
    assert model.training and model[1].training and not model[2].training
    # eval mode: BatchNorm running statistics untouched
    assert torch.equal(model[1].running_mean, stats_before)
    assert model[0].weight.grad is None


def test_count_params_dedups_shared() -> None:
    shared = nn.Linear(10, 10)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    assert count_params(model) == 10 * 10 + 10

    a = nn.Linear(4, 4, bias=False)
    b = nn.Linear(4, 4, bias=False)
    b.weight = a.weight  # tied weights in different modules
    tied = nn.ModuleDict({"a": a, "b": b})
    assert count_params(tied) == 16
    assert count_params(nn.Conv2d(3, 8, 3)) == 3 * 8 * 9 + 8


def test_latency_interleaved_results() -> None:
    x = torch.randn(1, 8, 16, 16)
    small, big = _stack(8), nn.Sequential(nn.Conv2d(8, 64, 3, padding=1), nn.Conv2d(64, 8, 3, padding=1))
    big.train()
    seen = {"small": [], "big": []}
    for name, model in (("small", small), ("big", big)):
        model.register_forward_hook(
            lambda mod, args, out, name=name: seen[name].append(
                (mod.training, torch.is_inference_mode_enabled(), torch.get_num_threads())
            )
        )
    prev_threads = torch.get_num_threads()
    results = measure_cpu_latency({"small": small, "big": big}, x, threads=1, warmup=1, iters=3, repeats=2)
    assert torch.get_num_threads() == prev_threads
    assert big.training  # mode restored
    assert list(results) == ["small", "big"]
    for name, res in results.items():
        # 1 warm-up and 2 rounds of 3 timed calls, each in eval and inference mode on one thread
        assert seen[name] == [(False, True, 1)] * 7, seen[name]
        assert len(res.repeat_medians) == 2
        assert min(res.repeat_medians) <= res.median_ms <= max(res.repeat_medians)  # one set of samples
    # 72x the FLOPs: slower in every interleaved round, whatever the load on the machine
    assert speedup(results["big"], results["small"]) > 2.0


def test_statistics_of_samples() -> None:
    samples = [4.0, 1.0, 3.0, 2.0, 10.0]
    m = Measurement.from_samples(samples, [2.0, 3.0], name="m", backend="torch", precision="fp32", batch=4,
                                 threads=1, warmup=0, iters=5, repeats=1, device="cpu")
    assert (m.median_ms, m.mean_ms) == (3.0, 4.0)
    assert m.p90_ms == pytest.approx(7.6)  # between 4 and 10, linearly interpolated
    assert m.throughput == pytest.approx(4 * 1000 / 3.0)  # items per second at the median
    assert percentile([1.0, 2.0, 3.0, 4.0], 50.0) == 2.5 and percentile([5.0], 90.0) == 5.0
    assert (percentile([1.0, 2.0, 3.0], 0.0), percentile([1.0, 2.0, 3.0], 100.0)) == (1.0, 3.0)


def test_speedup_is_the_median_of_per_round_ratios() -> None:
    def result(medians: list[float]) -> Measurement:
        return Measurement.from_samples(medians, medians, name="m", backend="ort", precision="fp32", batch=1,
                                        threads=1, warmup=0, iters=1, repeats=len(medians), device="cpu")

    # the load changed between rounds (both models saw it): each round's ratio is what counts
    dense, pruned = result([1.0, 10.0, 4.0]), result([1.0, 2.0, 4.0])
    assert speedup(dense, pruned) == pytest.approx(1.0)  # round ratios 1, 5, 1
    assert dense.median_ms / pruned.median_ms == pytest.approx(2.0)  # what the overall medians would say
    assert speedup(result([1.0, 1.0, 1.0]), result([1.02, 1.02, 1.02])) == pytest.approx(1 / 1.02)
    assert not is_slower(1 / 1.02) and is_slower(0.9)  # within the noise margin vs clearly slower
    assert is_slower(0.99, tolerance=0.0)


def test_latency_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        measure_cpu_latency({}, torch.randn(1))
    with pytest.raises(ValueError):
        measure_cpu_latency({"m": nn.Identity()}, torch.randn(1), iters=0)
