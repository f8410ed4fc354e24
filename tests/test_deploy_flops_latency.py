"""FLOPs targets met where the runtime's latency falls most; INT8 layer tables from one-layer QDQ files."""

from __future__ import annotations

import collections
import sys

import numpy as np
import pytest
import torch
from fxprune.deploy import FlopsLatencyPlanner, plan_flops_by_latency
from fxprune.deploy import prune as deploy_prune
from fxprune.deploy.latency_model import LatencyModel
from fxprune.deploy.lut import LatencyTable, LayerShape

import fxprune
from fxprune.measure import count_flops
from fxprune.models import create_model
from fxprune.targets import plan_for_target, slimmed_copy
from tests.latency_helpers import AnalyticTable, analytic_ms


class HighResolutionTable(AnalyticTable):
    """MAC-proportional latencies, except that layers on 32x32 maps (the first stage of a CIFAR ResNet)
    run at a quarter of the rate per MAC: narrow high-resolution layers on INT8 kernels."""

    def ensure(self, shapes, *, progress=None) -> int:
        todo = [s for s in shapes if s.key not in self.entries]
        for s in todo:
            self.entries[s.key] = analytic_ms(s) * (4.0 if s.kind == "conv" and s.h == 32 else 1.0)
        self.entries.setdefault(LayerShape("conv", 8, 8, 1, 1).key, 0.01)
        return len(todo)


@pytest.fixture(scope="module")
def resnet():
    torch.manual_seed(0)
    model, x = create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)
    return model, x, fxprune.analyze(model, x, round_to=4)


def conv_macs(model: torch.nn.Module, x: torch.Tensor) -> int:
    total = []

    def hook(mod, _, y):
        total.append(y.numel() * mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1])

    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        model(x)
    for h in handles:
        h.remove()
    return sum(total)


def test_layer_macs_follow_the_slimmed_model(resnet):
    model, x, analysis = resnet
    lm = LatencyModel.build(analysis, x, AnalyticTable(path="/nonexistent/lut.json"), round_to=4)
    convs = [i for i, layer in enumerate(lm.layers) if layer.shape.kind == "conv"]
    assert sum(lm.layer_macs(i, {}) for i in convs) == conv_macs(model, x)
    plan = analysis.plan(0.5, round_to=4)
    counts = {gid: len(idx) for gid, idx in plan.remove.items()}
    slim = slimmed_copy(analysis, plan)
    assert sum(lm.layer_macs(i, counts) for i in convs) == conv_macs(slim, x) < conv_macs(model, x)


def test_flops_target_met_where_latency_falls_most(resnet):
    model, x, analysis = resnet
    lm = LatencyModel.build(analysis, x, HighResolutionTable(path="/nonexistent/lut.json"), round_to=4)
    result = plan_flops_by_latency(analysis, x, 0.5, latency_model=lm, round_to=4)
    slim = slimmed_copy(analysis, result.plan)
    assert count_flops(slim, x) / count_flops(model, x) == pytest.approx(result.flops_fraction)
    assert result.flops_fraction <= 0.5
    assert set(result.candidates) == {"importance", "flops", "uniform"}
    uniform = plan_for_target(analysis, x, 0.5, round_to=4)
    uniform_latency = lm.ratio({gid: len(idx) for gid, idx in uniform.remove.items()})
    assert result.candidates["uniform"] == pytest.approx(uniform_latency)
    # the table makes the first stage 4x dearer per MAC: the chosen plan cuts it harder and runs faster
    assert result.ranking != "uniform"
    assert result.estimated_latency_ratio < 0.95 * uniform_latency
    first_stage = [layer for layer in lm.layers if layer.shape.h == 32 and layer.out_group is not None]
    share = lambda plan, g: len(plan.remove.get(g, [])) / analysis.groups[g].width  # noqa: E731
    assert max(share(result.plan, layer.out_group) for layer in first_stage) > max(
        share(uniform, layer.out_group) for layer in first_stage
    )


def test_flops_target_out_of_reach_is_one_clear_error(resnet):
    _, x, analysis = resnet
    lm = LatencyModel.build(analysis, x, AnalyticTable(path="/nonexistent/lut.json"), round_to=64)
    with pytest.raises(ValueError, match="cannot reach 10% of the dense FLOPs with 64-channel steps"):
        plan_flops_by_latency(analysis, x, 0.1, latency_model=lm, round_to=64)
    with pytest.raises(ValueError, match="rankings must be among"):
        plan_flops_by_latency(analysis, x, 0.5, latency_model=lm, rankings=("speed",))
    with pytest.raises(ValueError, match=r"target_flops must be in \(0, 1\)"):
        FlopsLatencyPlanner(1.5)


def test_deploy_prune_by_latency_is_verified_and_meets_the_target(monkeypatch, tmp_path):
    import fxprune.deploy.flops_planner as flops_planner

    monkeypatch.setattr(
        flops_planner, "LatencyTable", lambda *a, **k: HighResolutionTable(path=tmp_path / "t")
    )
    torch.manual_seed(0)
    model, x = create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)
    dense_flops = count_flops(model, x)
    report = deploy_prune(model, x, target_flops=0.5, by_latency=True, precision="int8", round_to=4)
    assert report.round_to == 4
    assert count_flops(model, x) <= 0.5 * dense_flops
    widths = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    assert all(w % 4 == 0 for w in widths)
    with pytest.raises(ValueError, match="give target_flops"):
        deploy_prune(model, x, by_latency=True)
    with pytest.raises(ValueError, match="and not target_latency"):
        deploy_prune(model, x, target_flops=0.5, target_latency="0.5x", by_latency=True)


def test_int8_conv_tables_time_one_layer_qdq_files_without_nncf(monkeypatch, tmp_path, single_thread):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    from fxprune.deploy.layer_files import write_layer_qdq_onnx

    quantize_module = sys.modules["fxprune.deploy.quantize"]  # the package exports its function by that name

    shape = LayerShape("conv", 16, 32, 12, 12, kernel=(3, 3), padding=(1, 1))
    module, x = shape.build()
    path = write_layer_qdq_onnx(module, x, tmp_path / "layer.onnx")
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
    session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == 1 and ops["Conv"] == 0  # onnxruntime runs it with its INT8 kernel
    got = session.run(None, {"input": x.numpy()})[0]
    with torch.no_grad():
        want = module(x).numpy()
    assert np.abs(got - want).max() < 0.05 * np.abs(want).max()  # INT8 rounding only

    def no_nncf(*args, **kwargs):
        raise AssertionError("an INT8 conv table entry went through NNCF")

    monkeypatch.setattr(quantize_module, "quantize", no_nncf)
    table = LatencyTable("ort", "int8", 1, path=tmp_path / "int8.json", repeats=1, budget_s=0.02)
    table.entries[LayerShape("conv", 8, 8, 1, 1).key] = 0.01  # overhead and reference known: no NNCF run
    table.entries[LayerShape("conv", 32, 32, 28, 28, kernel=(3, 3), padding=(1, 1)).key] = 0.5
    small = shape.with_channels(16, 16)
    assert table.ensure([shape, small]) == 2
    assert table[shape] > 0 and table[small] > 0
