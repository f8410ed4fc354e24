"""Tests for FLOP/parameter counting and interleaved CPU latency."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from fxprune.measure import LatencyResult, count_flops, count_params, measure_cpu_latency


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
    prev_threads = torch.get_num_threads()
    results = measure_cpu_latency({"small": small, "big": big}, x, threads=1, warmup=1, iters=3, repeats=2)
    assert torch.get_num_threads() == prev_threads
    assert big.training  # mode restored
    assert list(results) == ["small", "big"]
    for res in results.values():
        assert isinstance(res, LatencyResult)
        assert res.median_ms > 0
        assert res.p90_ms >= res.median_ms
        assert res.mean_ms > 0
        assert (res.iters, res.repeats, res.warmup, res.threads, res.device) == (3, 2, 1, 1, "cpu")


def test_latency_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError):
        measure_cpu_latency({}, torch.randn(1))
    with pytest.raises(ValueError):
        measure_cpu_latency({"m": nn.Identity()}, torch.randn(1), iters=0)
