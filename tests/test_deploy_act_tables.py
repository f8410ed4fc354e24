"""INT8 layer tables that time each conv with its SiLU, as deployed, and FLOPs plans that see that cost."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch
from fxprune.deploy import plan_flops_by_latency
from fxprune.deploy.latency_model import LatencyModel
from fxprune.deploy.layer_files import write_layer_openvino_ir, write_layer_qdq_onnx
from fxprune.deploy.lut import LatencyTable, LayerShape
from torch import nn

import fxprune
from tests.latency_helpers import AnalyticTable, analytic_ms


def block(
    cin: int, cout: int, stride: int = 1, norm: bool = True, act: type | None = nn.SiLU
) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, 3, stride, 1, bias=not norm)]
    layers += [nn.BatchNorm2d(cout)] if norm else []
    layers += [act()] if act else []
    return nn.Sequential(*layers)


class SiluNet(nn.Module):
    """Two wide-ish SiLU layers at full resolution, two at a quarter, a ReLU layer and a plain head conv."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = block(3, 16)
        self.hi = block(16, 32, norm=False)
        self.down = block(32, 64, stride=2)
        self.lo = block(64, 64)
        self.relu = block(64, 64, act=nn.ReLU)
        self.head = nn.Conv2d(64, 10, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.relu(self.lo(self.down(self.hi(self.stem(x)))))).mean((2, 3))


class ElementwiseTable(AnalyticTable):
    """MAC-proportional conv latencies, plus SiLU's elementwise work (per output element) on entries timed
    with their SiLU: heavy on narrow layers at high resolution, as on onnxruntime's INT8 kernels."""

    def ensure(self, shapes, *, progress=None) -> int:
        todo = [s for s in shapes if s.key not in self.entries]
        for s in todo:
            out = s.cout * (s.h // s.stride[0]) * (s.w // s.stride[1])
            self.entries[s.key] = analytic_ms(s) + (4e-5 * out if s.act else 0.0)
        self.entries.setdefault(LayerShape("conv", 8, 8, 1, 1).key, 0.01)
        return len(todo)


@pytest.fixture(scope="module")
def silu_net():
    torch.manual_seed(0)
    model, x = SiluNet().eval(), torch.randn(1, 3, 32, 32)
    return model, x, fxprune.analyze(model, x, round_to=4)


def test_convs_followed_by_silu_are_timed_with_it(silu_net):
    _, x, analysis = silu_net
    table = AnalyticTable(path="/nonexistent/lut.json")
    acts = {
        layer.name: layer.shape
        for layer in LatencyModel.build(analysis, x, table, 4, activations=True).layers
    }
    assert {n: s.act for n, s in acts.items()} == {
        "stem.0": "silu", "hi.0": "silu", "down.0": "silu", "lo.0": "silu", "relu.0": "", "head": "",
    }  # fmt: skip
    assert acts["stem.0"].bias and not acts["relu.0"].bias  # a batch norm ahead of SiLU is folded into a bias
    plain = LatencyModel.build(analysis, x, table, 4).layers
    assert all(layer.shape.act == "" for layer in plain)
    assert acts["lo.0"].key == plain[3].shape.key.replace(":b0", ":b1") + ":silu"


def test_flops_plan_cuts_where_silu_work_falls(silu_net):
    model, x, analysis = silu_net
    results = {}
    for act in (False, True):
        lm = LatencyModel.build(
            analysis, x, ElementwiseTable(path="/nonexistent/lut.json"), 4, activations=act
        )
        results[act] = plan_flops_by_latency(
            analysis, x, 0.5, latency_model=lm, round_to=4, rankings=("flops",)
        )
        assert results[act].flops_fraction <= 0.5
    hi_group = next(g.id for g in analysis.groups if any(("hi.0.weight", 0) in b.members for b in g.blocks))
    removed = {act: len(r.plan.remove.get(hi_group, [])) for act, r in results.items()}
    # SiLU's elementwise work at full resolution is invisible to the conv-only table: only the
    # activation-aware one takes more of the full-resolution layer
    assert removed[True] > removed[False]


def test_conv_silu_files_run_as_each_runtime_runs_them(tmp_path, single_thread):
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    ov = pytest.importorskip("openvino")
    shape = LayerShape("conv", 16, 32, 20, 20, kernel=(3, 3), padding=(1, 1), act="silu")
    module, x = shape.build()
    assert isinstance(module[1], nn.SiLU) and shape.key != LayerShape("conv", 16, 32, 20, 20).key
    with torch.no_grad():
        want = module(x).numpy()

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
    path = write_layer_qdq_onnx(module, x, tmp_path / "layer.onnx")
    got = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"]).run(
        None, {"input": x.numpy()}
    )
    ops = collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)
    assert ops["QLinearConv"] == ops["QLinearSigmoid"] == ops["QLinearMul"] == 1  # as in the deployed QDQ
    assert ops["Conv"] == ops["Sigmoid"] == ops["Mul"] == 0
    assert np.abs(got[0] - want).max() < 0.05 * np.abs(want).max()

    xml = write_layer_openvino_ir(module, x, tmp_path / "layer.onnx")
    compiled = ov.Core().compile_model(str(xml), "CPU", {"INFERENCE_NUM_THREADS": "1"})
    kinds = [n.get_rt_info()["layerType"].astype(str) for n in compiled.get_runtime_model().get_ordered_ops()]
    after = kinds[kinds.index("Convolution") + 1 :]
    assert kinds.count("Convolution") == 1 and not {"Subgraph", "Eltwise"} & set(after)  # SiLU fused into it
    assert np.abs(compiled(x.numpy())[0] - want).max() < 0.05 * np.abs(want).max()

    with pytest.raises(ValueError, match="unknown layer activation"):
        LayerShape("conv", 4, 4, 4, 4, act="gelu").build()


def test_int8_tables_route_silu_entries_per_runtime(tmp_path):
    pytest.importorskip("onnxruntime")
    shape = LayerShape("conv", 16, 32, 20, 20, act="silu")
    ort_writer = LatencyTable("ort", "int8", 1, path=tmp_path / "a.json")._layer_writer(shape)
    ov_writer = LatencyTable("openvino", "int8", 1, path=tmp_path / "b.json")._layer_writer(shape)
    assert ov_writer is write_layer_openvino_ir
    assert ort_writer.func is write_layer_qdq_onnx and ort_writer.keywords == {"act_pairs": True}
