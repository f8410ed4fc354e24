"""Channel alignment, the layer latency table, the latency model and the latency-budget planner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from fxprune.deploy.alignment import cpu_vector_width, default_round_to
from fxprune.deploy.budget import (
    budget_plan,
    greedy_counts,
    kept_importance,
    parse_latency_target,
    plan_for_latency,
)
from fxprune.deploy.latency_model import LatencyModel
from fxprune.deploy.lut import LatencyTable, LayerShape
from fxprune.deploy.sweep import SweepPoint, latency_sweep, slower_points

import fxprune
from fxprune.models import create_model
from fxprune.plan import plan_from_counts
from fxprune.targets import slimmed_copy
from tests.latency_helpers import AnalyticTable


def test_default_round_to_per_backend_and_precision():
    assert default_round_to("trt", "fp16") == 8
    assert default_round_to("trt", "int8") == 32
    assert default_round_to("ort-cuda", "fp32") == 8
    lanes = cpu_vector_width()
    assert default_round_to("ort") == lanes
    assert default_round_to("openvino", "int8") == 4 * lanes
    with pytest.raises(ValueError, match="no alignment rule"):
        default_round_to("trt", "fp8")


@pytest.mark.parametrize(
    ("cpuinfo", "lanes"),
    [("flags\t: fpu sse2 avx2 fma avx512f avx512bw", 16), ("flags\t: fpu sse2 avx avx2 fma", 8),
     ("flags\t: fpu sse2 sse4_2", 4), ("Features\t: fp asimd", 4), (None, 8)],
    ids=["avx512", "avx2", "sse", "neon", "unreadable"],
)
def test_cpu_vector_width_from_the_cpu_flags(monkeypatch, cpuinfo, lanes):
    read_text = Path.read_text

    def fake_read_text(self, *args, **kwargs):
        if str(self) != "/proc/cpuinfo":
            return read_text(self, *args, **kwargs)
        if cpuinfo is None:
            raise PermissionError(str(self))
        return f"processor\t: 0\n{cpuinfo}\n"

    monkeypatch.setattr(Path, "read_text", fake_read_text)
    cpu_vector_width.cache_clear()
    try:
        assert cpu_vector_width() == lanes
    finally:
        cpu_vector_width.cache_clear()  # the next caller reads the real flags


def test_slower_points_flags_only_real_slowdowns():
    pts = [SweepPoint(r, 1.1, 1.1, s, 1.0, 1.0 / s, 8) for r, s in ((0.05, 0.99), (0.1, 0.9), (0.5, 2.0))]
    assert [p.ratio for p in slower_points(pts)] == [0.1]


def test_sweep_measures_dense_against_every_ratio(single_thread):
    pytest.importorskip("onnxruntime")
    model, x = create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)
    points, dense = latency_sweep(model, x, (0.3, 0.6), "ort", round_to=8, repeats=2, budget_s=0.5)
    assert [p.ratio for p in points] == [0.3, 0.6]
    assert all(p.round_to == 8 for p in points)
    assert 1.1 < points[0].flops_ratio < points[1].flops_ratio
    assert dense.backend == "ort"


def test_layer_shape_keys_and_channels():
    conv = LayerShape("conv", 16, 32, 8, 8, kernel=(3, 3), padding=(1, 1))
    assert conv.key != conv.with_channels(16, 24).key
    dw = LayerShape("conv", 32, 32, 8, 8, kernel=(3, 3), padding=(1, 1), groups=32)
    assert dw.depthwise and dw.with_channels(16, 16).groups == 16
    module, x = dw.with_channels(16, 16).build()
    assert module(x).shape == (1, 16, 8, 8)
    lin = LayerShape("linear", 64, 10, 1)
    assert lin.build()[0](lin.build()[1]).shape == (1, 10)


def test_latency_table_cache_round_trip(tmp_path, single_thread):
    pytest.importorskip("onnxruntime")
    path = tmp_path / "lut.json"
    shapes = [LayerShape("conv", 8, 16, 8, 8, kernel=(3, 3), padding=(1, 1)), LayerShape("linear", 32, 8, 1)]
    table = LatencyTable("ort", "fp32", 1, path, repeats=2, budget_s=0.02)
    assert table.ensure(shapes) == 2 and path.is_file()
    again = LatencyTable("ort", "fp32", 1, path)
    assert again.ensure(shapes) == 0
    assert again.entries == table.entries
    # the layers, the per-call overhead and the reference layer the others are timed against
    assert len(again.entries) == len(shapes) + 2 and all(again.entries[s.key] > 0 for s in shapes)
    other = LatencyTable("ort", "fp32", 2, path)  # other conditions: the cached entries do not apply
    assert not other.entries


def test_latency_table_subtracts_the_per_call_overhead(tmp_path):
    conv = LayerShape("conv", 8, 16, 8, 8, kernel=(3, 3), padding=(1, 1))
    table = AnalyticTable(path=tmp_path / "lut.json")
    table.ensure([conv])
    overhead = table.overhead()  # in the table already: nothing is measured
    assert overhead > 0 and table.entries[conv.key] > overhead
    assert table[conv] == pytest.approx(table.entries[conv.key] - overhead)
    tiny = LayerShape("linear", 2, 2, 1)
    table.entries[tiny.key] = overhead / 2  # faster than the overhead: measurement noise, never negative
    assert table[tiny] == 0.0


@pytest.fixture(scope="module")
def resnet_model():
    torch.manual_seed(0)
    model, x = create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    lm = LatencyModel.build(analysis, x, AnalyticTable(path="/nonexistent/lut.json"), round_to=4)
    return analysis, x, lm


def test_latency_model_follows_group_widths(resnet_model):
    analysis, _, lm = resnet_model
    layers = (torch.nn.Conv2d, torch.nn.Linear)
    assert len(lm.layers) == sum(isinstance(m, layers) for m in analysis.model.modules())
    assert lm.ratio({}) == pytest.approx(1.0)
    gid = next(g for g in lm.by_group if analysis.groups[g].prunable)
    half = {gid: analysis.groups[gid].width // 2}
    assert lm.ratio(half) < 1.0


@pytest.mark.parametrize("target", [0.7, 0.5, 0.35])
def test_greedy_budget_met_on_its_own_model_and_beats_uniform(resnet_model, target):
    analysis, _, lm = resnet_model
    scores = analysis.scores("l2")
    plan = budget_plan(analysis.groups, scores, lm, target, round_to=4)
    est = lm.ratio({g: len(i) for g, i in plan.remove.items()})
    assert est <= target + 1e-9
    assert est >= target * 0.85  # does not overshoot by much either
    # uniform ratio pruning with (at least) the same estimated latency keeps less importance
    uniform = None
    for r in np.linspace(0.02, 0.95, 60):
        p = analysis.plan(float(r), round_to=4)
        if lm.ratio({g: len(i) for g, i in p.remove.items()}) <= est:
            uniform = p
            break
    assert uniform is not None
    assert kept_importance(analysis.groups, scores, plan) >= kept_importance(analysis.groups, scores, uniform)


def test_greedy_counts_respect_caps(resnet_model):
    analysis, _, lm = resnet_model
    scores = analysis.scores("l2")
    free = greedy_counts(analysis.groups, scores, lm, 0.5, round_to=4)
    gid = max(free, key=free.get)
    assert free[gid] > 4  # the cap below binds
    capped = greedy_counts(analysis.groups, scores, lm, 0.5, round_to=4, caps={gid: 4})
    assert capped.get(gid, 0) <= 4
    assert lm.ratio(capped) <= 0.5 + 1e-9  # the budget is still met, by the other groups


def test_exact_layer_widths_for_partial_blocks(resnet_model):
    analysis, _, lm = resnet_model
    plan = plan_from_counts(analysis.groups, analysis.scores("l2"), {0: 8}, round_to=1)
    slim = slimmed_copy(analysis, plan)
    widths = {n: m.weight.shape[0] for n, m in slim.named_modules() if isinstance(m, torch.nn.Conv2d)}
    in_group = [layer for layer in lm.layers if layer.out_group == 0]
    assert in_group, "no layer writes group 0"
    for layer in in_group:
        assert lm.channels(layer, {0: 8})[1] == widths[layer.name] < analysis.groups[0].width


def test_parse_latency_target():
    assert parse_latency_target("0.5x") == (0.5, "x")
    assert parse_latency_target(0.3) == (0.3, "x")
    assert parse_latency_target("12ms") == (12.0, "ms")
    assert parse_latency_target(" 2.5 ms") == (2.5, "ms")
    for bad in ("fast", "1.5x", "0x", "-3ms"):
        with pytest.raises(ValueError):
            parse_latency_target(bad)


def test_plan_for_latency_checks_by_measurement(single_thread):
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    model, x = create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    res = plan_for_latency(
        analysis,
        x,
        "0.6x",
        "ort",
        table=AnalyticTable(path="/nonexistent/lut.json"),
        round_to=4,
        max_rounds=2,
        measure_kw={"repeats": 3, "budget_s": 0.5},
    )
    assert res.target_ratio == pytest.approx(0.6)
    assert res.measured_ratio is not None and 0.1 < res.measured_ratio < 1.2
    assert 1 <= len(res.rounds) <= 2 and res.plan.removed_count() > 0
    # the plan returned is the one of a measured round, and it fits that round's internal target
    (chosen,) = [r for r in res.rounds if r["measured_ratio"] == res.measured_ratio]
    assert chosen["estimated_ratio"] == pytest.approx(res.estimated_ratio)
    assert res.estimated_ratio <= chosen["internal_target"] + 1e-9
    kept = [g.width - len(res.plan.remove[g.id]) for g in analysis.groups if g.id in res.plan.remove]
    assert kept and all(k % 4 == 0 for k in kept)  # round_to=4 on widths that are multiples of 4
    assert 0 < res.kept_importance < 1


def test_next_internal_target_follows_the_measured_rounds():
    from fxprune.deploy.budget import next_internal_target

    def row(est, measured):
        return {"internal_target": est, "estimated_ratio": est, "measured_ratio": measured}

    # one round: the power law through the dense model (1, 1) and (0.5, 0.25) gives 0.5 ** 0.5 for 0.5
    assert next_internal_target([row(0.5, 0.25)], 0.5) == pytest.approx(0.5**0.5)
    assert next_internal_target([row(0.5, 0.8)], 0.5) < 0.5  # measured too slow: plan for less
    assert next_internal_target([row(0.6, 0.95)], 0.6) == pytest.approx(0.36)  # a noisy round: bounded
    # rounds on both sides of the target: log-log interpolation between them, strictly inside
    bracketed = next_internal_target([row(0.5, 0.2), row(0.9, 0.8), row(0.3, 0.05)], 0.5)
    w = (np.log(0.5) - np.log(0.2)) / (np.log(0.8) - np.log(0.2))
    assert bracketed == pytest.approx(np.exp(np.log(0.5) + w * (np.log(0.9) - np.log(0.5))))
    assert next_internal_target([row(0.9, 1.3)], 0.5) == pytest.approx(0.9 * 0.5 / 1.3)  # no power law


def test_layer_onnx_files_compute_what_the_layer_computes(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    from fxprune.deploy.layer_files import write_layer_onnx

    shapes = [
        LayerShape("conv", 8, 12, 9, 7, 2, (3, 3), (2, 2), (1, 1), (1, 1), 4, True),
        LayerShape("conv", 8, 8, 6, 6, 1, (3, 3), (1, 1), (2, 2), (2, 2), 8, False),
        LayerShape("linear", 16, 5, 3, bias=False),
    ]
    for shape in shapes:
        module, x = shape.build()
        path = write_layer_onnx(module, x, tmp_path / "layer.onnx")
        got = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(
            None, {"input": x.numpy()}
        )
        with torch.no_grad():
            np.testing.assert_allclose(got[0], module(x).numpy(), atol=1e-5)


def test_latency_planner_asked_again_reuses_the_dense_latency_and_its_last_target(monkeypatch):
    import fxprune.deploy.budget as budget
    from fxprune.deploy import LatencyPlanner

    torch.manual_seed(0)
    model, x = create_model("cifar_resnet20").train(), torch.randn(2, 3, 32, 32)
    analysis = fxprune.analyze(model, x)
    dense_runs = []
    monkeypatch.setattr(budget, "_dense_ms", lambda *a: dense_runs.append(1) or 4.0)
    monkeypatch.setattr(budget, "_measured_ratio", lambda analysis, _, plan, *a: _kept_cubed(analysis, plan))
    planner = LatencyPlanner("0.5x", "torch", table=AnalyticTable(path="/nonexistent/lut.json"), round_to=4)
    planner.plan(analysis, x)
    first = planner.result
    assert model.training  # the latency model's forward pass left the training mode alone
    assert first.measured_ratio <= 0.55 and len(dense_runs) == 1
    planner.plan(analysis, x)
    assert len(dense_runs) == 1 and planner.result.dense_ms == 4.0  # measured once
    assert planner.result.rounds[0]["internal_target"] == pytest.approx(first.internal_target)
    assert len(planner.result.rounds) <= len(first.rounds)


def _kept_cubed(analysis, plan) -> float:
    """A stand-in runtime: latency ratio = (fraction of channels kept) ** 3."""
    total = sum(g.width for g in analysis.groups)
    return (1 - plan.removed_count() / total) ** 3
