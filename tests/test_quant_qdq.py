"""QDQ ONNX of networks with SiLU: onnxruntime runs every quantized convolution with its INT8 kernel."""

from __future__ import annotations

import collections
import io

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nncf")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from fxprune.deploy import quantize, run_artifact  # noqa: E402
from fxprune.deploy.qdq import (  # noqa: E402
    activations_to_uint8,
    softmax_on_last_axis,
    unquantized_conv_tensors,
)

FLOAT_CONVS = ("Conv", "FusedConv")  # what onnxruntime runs in fp32 (NCHWc convs keep the name Conv)


class SiluNet(nn.Module):
    """YOLO's pattern in small: conv + SiLU, a channel split, a concat of branches, a conv head output."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1)
        self.branch = nn.Conv2d(8, 8, 3, padding=1)
        self.merge = nn.Conv2d(24, 16, 1)
        self.head = nn.Conv2d(16, 4, 1)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.act(self.stem(x))
        a, b = y.chunk(2, 1)
        y = self.act(self.merge(torch.cat([a, b, self.act(self.branch(b))], 1)))
        return self.head(y)


def _ops_onnxruntime_runs(path, tmp_path) -> collections.Counter:
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / f"{path.stem}-optimized.onnx")
    opts.log_severity_level = 3
    ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    return collections.Counter(n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node)


@pytest.mark.parametrize("preset", ["mixed", "performance"])
def test_silu_net_has_no_fp32_conv_after_onnxruntime_optimisation(preset, tmp_path, single_thread):
    torch.manual_seed(0)
    net = SiluNet().eval()
    x = torch.randn(1, 3, 16, 16)
    calib = [torch.randn(16, 3, 16, 16)]
    plain = quantize(net, x, calib, "onnx", tmp_path / "plain.onnx", subset_size=16, preset=preset,
                     requantize_convs=False)  # fmt: skip
    assert any(_ops_onnxruntime_runs(plain.path, tmp_path)[op] for op in FLOAT_CONVS)  # NNCF alone: fp32
    res = quantize(net, x, calib, "onnx", tmp_path / "m.onnx", subset_size=16, preset=preset)
    ops = _ops_onnxruntime_runs(res.path, tmp_path)
    assert ops["QLinearConv"] == 4 and not any(ops[op] for op in FLOAT_CONVS), ops
    assert sorted(res.requantized) == ["/branch/Conv", "/head/Conv", "/merge/Conv", "/stem/Conv"]
    assert ops["QLinearSigmoid"] == ops["QLinearMul"] == len(res.gates) == 3, ops  # SiLU in INT8
    assert not ops["Sigmoid"] and not ops["Mul"] and ops["DequantizeLinear"] == 1, ops
    nodes = onnx.load(str(res.path)).graph.node
    assert all(n.domain in ("", "ai.onnx") for n in nodes)  # standard QuantizeLinear/DequantizeLinear only
    assert unquantized_conv_tensors(onnx.load(str(res.path))) == ([], [])
    test_x = torch.randn(32, 3, 16, 16)
    with torch.no_grad():
        ref = net(test_x).numpy()
    got = np.concatenate([run_artifact(res.path, [test_x[i : i + 1]])[0] for i in range(len(test_x))])
    assert np.abs(got - ref).max() < 0.1 * (ref.max() - ref.min())


def test_uint8_rewrite_keeps_the_values():
    from onnx import TensorProto, helper, numpy_helper

    scale = numpy_helper.from_array(np.array(0.05, dtype=np.float32), "s")
    zero = numpy_helper.from_array(np.array(-7, dtype=np.int8), "z")
    graph = helper.make_graph(
        [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64])],
        [scale, zero],
        value_info=[helper.make_tensor_value_info("q", TensorProto.INT8, [64])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.linspace(-8, 8, 64, dtype=np.float32)

    def run(m):
        return ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(
            None, {"x": x}
        )

    before = run(model)[0]
    assert activations_to_uint8(model) == 1
    assert {i.data_type for i in model.graph.initializer if i.name.startswith("z")} == {
        TensorProto.INT8,
        TensorProto.UINT8,
    }
    np.testing.assert_array_equal(run(model)[0], before)


def test_tensorrt_latency_runs_keep_nncf_file(tmp_path):
    """Latency runs for TensorRT get NNCF's int8 QDQ (TensorRT rejects uint8 activations), onnxruntime the
    requantized file."""
    from fxprune.deploy.backends import get_backend
    from fxprune.deploy.runtime_latency import Int8Quantizer

    torch.manual_seed(0)
    net, x = SiluNet().eval(), torch.randn(1, 3, 16, 16)
    files = {}
    for name in ("trtexec", "ort"):
        quantizer = Int8Quantizer(get_backend(name), (x,), [torch.randn(1, 3, 16, 16) for _ in range(4)], 4)
        files[name] = onnx.load(str(quantizer(net, (x,), tmp_path / f"{name}.onnx")))
    assert unquantized_conv_tensors(files["trtexec"]) != ([], [])
    assert unquantized_conv_tensors(files["ort"]) == ([], [])


def test_softmax_moved_to_the_last_axis_keeps_the_values():
    class Dfl(nn.Module):  # YOLO's DFL: a softmax over 16 bins on an inner axis
        def forward(self, x):
            return x.view(1, 4, 16, 50).transpose(2, 1).softmax(1)

    buf = io.BytesIO()
    torch.onnx.export(Dfl(), (torch.randn(1, 64, 50),), buf, dynamo=False, opset_version=17)
    model = onnx.load_from_string(buf.getvalue())
    x = np.random.default_rng(0).standard_normal((1, 64, 50)).astype(np.float32)

    def run(m):
        sess = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {sess.get_inputs()[0].name: x})[0]

    before = run(model)
    assert len(softmax_on_last_axis(model)) == 1
    axes = [a.i for n in model.graph.node if n.op_type == "Softmax" for a in n.attribute if a.name == "axis"]
    assert axes == [-1]
    np.testing.assert_allclose(run(model), before, rtol=1e-6, atol=1e-7)


def test_sigmoid_gates_read_the_graph_once(monkeypatch):
    """A dequantized SiLU gate between quantizers gets its Sigmoid pair; the readers of every tensor are
    collected once for the search and the rewiring."""
    import fxprune.deploy.qdq as qdq
    from onnx import TensorProto, helper, numpy_helper

    scale, zero = (
        numpy_helper.from_array(np.array(0.1, np.float32), "s"),
        numpy_helper.from_array(np.array(128, np.uint8), "z"),
    )
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"]),
        helper.make_node("Sigmoid", ["xd"], ["sig"], name="gate"),
        helper.make_node("Mul", ["xd", "sig"], ["y"]),
        helper.make_node("QuantizeLinear", ["y", "s", "z"], ["yq"]),
        helper.make_node("DequantizeLinear", ["yq", "s", "z"], ["out"]),
    ]
    graph = helper.make_graph(
        nodes,
        "silu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4])],
        [scale, zero],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    calls = []
    original = qdq._consumers
    monkeypatch.setattr(qdq, "_consumers", lambda g: calls.append(1) or original(g))
    assert qdq.quantize_sigmoid_gates(model) == ["gate"]
    assert len(calls) == 1
    mul = next(n for n in model.graph.node if n.op_type == "Mul")
    assert mul.input[1] == "sig_gate_dq"  # the Mul reads the Sigmoid through its new pair
    x = np.linspace(-3, 3, 4, dtype=np.float32).reshape(1, 4)
    got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
        None, {"x": x}
    )[0]
    xd = np.clip(np.round(x / 0.1) + 128, 0, 255).astype(np.float32) * 0.1 - 12.8
    np.testing.assert_allclose(got, xd / (1 + np.exp(-xd)), atol=0.11)


class StemNet(nn.Module):
    """ResNet's stem in small: conv + ReLU, max pooling, then two convolutions reading the pooled map."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, stride=2, padding=1)
        self.pool = nn.MaxPool2d(3, 2, 1)
        self.a = nn.Conv2d(16, 16, 1)
        self.b = nn.Conv2d(16, 16, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pool(torch.relu(self.stem(x)))
        return torch.relu(self.a(y)) + torch.relu(self.b(y))


def test_max_pooling_between_quantized_convs_runs_on_quantized_values(tmp_path, single_thread):
    torch.manual_seed(0)
    net = StemNet().eval()
    x = torch.randn(1, 3, 32, 32)
    res = quantize(net, x, [torch.randn(4, 3, 32, 32)], "onnx", tmp_path / "stem.onnx", subset_size=4)
    assert res.requantized == []  # no pair of its own for a conv reading the pooled map
    ops = _ops_onnxruntime_runs(res.path, tmp_path)
    assert ops["QLinearConv"] == 3 and not any(ops[k] for k in FLOAT_CONVS)
    assert ops["MaxPool"] == 0 and ops["ReorderInput"] == 0  # no float pooling between layout conversions
    got = run_artifact(res.path, [x])[0]
    with torch.no_grad():
        want = net(x).numpy()
    assert np.abs(got - want).max() < 0.1 * np.abs(want).max()
