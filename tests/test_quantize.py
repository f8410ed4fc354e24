"""INT8 quantization with NNCF: OpenVINO IR and QDQ ONNX, calibration data, INT8 alignment, TensorRT INT8."""

from __future__ import annotations

import sys
import types
from unittest import mock

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("nncf")
pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")

from fxprune.deploy import alignment, measure_latency, quantize, run_artifact  # noqa: E402
from fxprune.deploy.calibration import CalibrationBatches, letterbox, load_calibration  # noqa: E402
from fxprune.deploy.quantize import detection_head_names, head_float_ops  # noqa: E402

N_CLASSES = 4


def _patterns(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Images whose class is the orientation of a stripe pattern (plus noise): learnable, not random."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, N_CLASSES, (n,), generator=g)
    yy, xx = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
    angles = labels.float() * (torch.pi / N_CLASSES)
    phase = torch.rand(n, generator=g) * 6.28
    waves = torch.sin(
        0.9 * (xx * torch.cos(angles)[:, None, None] + yy * torch.sin(angles)[:, None, None])
        + phase[:, None, None]
    )
    x = waves[:, None].repeat(1, 3, 1, 1) + 0.3 * torch.randn(n, 3, 16, 16, generator=g)
    return x, labels


@pytest.fixture(scope="module")
def trained():
    """A small CNN trained for a few steps to tell the stripe classes apart (accuracy checked)."""
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1, stride=2),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(32, N_CLASSES),
    )
    x, y = _patterns(512, 0)
    opt = torch.optim.Adam(net.parameters(), lr=0.02)
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for step in range(80):
            idx = torch.arange(64) + (step % 8) * 64
            opt.zero_grad()
            nn.functional.cross_entropy(net(x[idx]), y[idx]).backward()
            opt.step()
    finally:
        torch.set_num_threads(prev)
    net.eval()
    test_x, test_y = _patterns(200, 1)
    with torch.no_grad():
        acc = (net(test_x).argmax(1) == test_y).float().mean().item()
    assert acc > 0.9, f"the test model did not learn its task ({acc:.2f})"
    return net, test_x


@pytest.mark.slow
@pytest.mark.parametrize("backend,suffix", [("openvino", ".xml"), ("onnx", ".onnx")])
def test_quantized_model_is_int8_and_agrees_with_fp32(trained, backend, suffix, tmp_path, single_thread):
    net, test_x = trained
    calib = [_patterns(16, 2 + i)[0] for i in range(4)]  # batches of 16 are split to the example's 1
    res = quantize(net, test_x[:1], calib, backend, tmp_path / f"m{suffix}", subset_size=64)
    assert res.path.suffix == suffix and res.path.is_file() and res.samples == 64
    if backend == "openvino":
        import openvino as ov

        ops = {op.get_type_name() for op in ov.Core().read_model(str(res.path)).get_ordered_ops()}
        assert "FakeQuantize" in ops
    else:
        import onnx

        nodes = onnx.load(str(res.path)).graph.node
        assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in nodes}
        assert all(n.domain in ("", "ai.onnx") for n in nodes)  # standard ops only, no custom domain
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / "fused.onnx")
        opts.log_severity_level = 3
        ort.InferenceSession(str(res.path), opts, providers=["CPUExecutionProvider"])
        fused = {n.op_type for n in onnx.load(opts.optimized_model_filepath).graph.node}
        assert "QLinearConv" in fused  # onnxruntime runs the convolutions with its INT8 kernels
    assert res.quantized_ops >= 3
    with torch.no_grad():
        ref = net(test_x).numpy()
    got = np.concatenate([run_artifact(res.path, [test_x[i : i + 1]])[0] for i in range(len(test_x))])
    spread = ref.max() - ref.min()
    assert np.abs(got - ref).max() < 0.15 * spread
    agreement = (got.argmax(1) == ref.argmax(1)).mean()
    assert agreement >= 0.95


def test_quantized_files_time_like_any_model_file(trained, tmp_path, single_thread):
    net, test_x = trained
    calib = [_patterns(8, 7)[0]]
    onnx_res = quantize(net, test_x[:1], calib, "onnx", tmp_path / "q.onnx", subset_size=8)
    ir_res = quantize(net, test_x[:1], calib, "openvino", tmp_path / "q.xml", subset_size=8)
    ort = measure_latency({"fp32": onnx_res.source_onnx, "int8": onnx_res.path}, test_x[:1], "ort", iters=3)
    ov = measure_latency({"fp32": ir_res.source_onnx, "int8": ir_res.path}, test_x[:1], "openvino", iters=3)
    assert all(m.median_ms > 0 for m in [*ort.values(), *ov.values()])


@pytest.mark.parametrize("backend,suffix", [("ort", ".onnx"), ("openvino", ".xml")])
def test_int8_sweep_quantizes_dense_and_every_ratio(trained, backend, suffix, monkeypatch, single_thread):
    from fxprune.deploy import latency_sweep

    quantize_module = sys.modules["fxprune.deploy.quantize"]  # the module, not the function of that name

    net, test_x = trained
    made = []

    def spy(model, *args, **kw):  # record every file the sweep quantizes, while it exists
        res = quantize(model, *args, **kw)
        made.append((res.path.suffix, quantize_module.is_quantized(res.path), res.samples))
        return res

    monkeypatch.setattr(quantize_module, "quantize", spy)
    calib = [_patterns(6, 9)[0]]  # split into 6 batches of the example's size
    points, dense = latency_sweep(
        net,
        test_x[:1],
        (0.5, 0.75),
        backend,
        precision="int8",
        round_to=8,
        calibration=calib,
        iters=3,
        repeats=2,
    )
    assert made == [(suffix, True, 6)] * 3  # dense and both ratios, quantized for this backend
    assert [p.ratio for p in points] == [0.5, 0.75] and all(p.flops_ratio > 1.5 for p in points)
    assert dense.precision == "int8" and "quantized by NNCF from 6 calibration batch(es)" in dense.notes
    assert all(p.speedup > 0 and p.round_to == 8 for p in points)


def test_int8_latency_without_calibration_warns_and_refuses_float_files(trained, tmp_path, single_thread):
    from fxprune.deploy import export_onnx

    net, test_x = trained
    with pytest.warns(UserWarning, match="no calibration data given"):
        res = measure_latency({"m": net}, test_x[:1], "ort", precision="int8", iters=2, repeats=1)
    assert "(the example inputs)" in res["m"].notes[0]
    fp32 = export_onnx(net, test_x[:1], tmp_path / "m.onnx", parity=False).path
    with pytest.raises(ValueError, match="m.onnx is not quantized"):
        measure_latency({"m": fp32}, test_x[:1], "ort", precision="int8", iters=2)
    with pytest.raises(ValueError, match="no input batches"):
        measure_latency({"m": net}, test_x[:1], "ort", precision="int8", calibration=[], iters=2)
    with pytest.raises(ValueError, match="precision fp32, fp16, not 'int8'"):
        measure_latency({"m": net}, test_x[:1], "ort-cuda", precision="int8")
    layer, layer_x = nn.Conv2d(8, 16, 3), torch.randn(1, 8, 6, 6)  # a layer table times other input shapes
    with pytest.warns(UserWarning, match="no calibration data given"):
        res = measure_latency({"m": net, "layer": layer}, test_x[:1], "ort", precision="int8", iters=2,
                              repeats=1, inputs_of={"layer": (layer_x,)})  # fmt: skip
    assert res["layer"].median_ms > 0


def test_calibration_shape_mismatch_names_the_batch(trained):
    net, test_x = trained
    bad = [torch.randn(1, 3, 16, 16), torch.randn(1, 3, 20, 20)]
    with pytest.raises(ValueError, match=r"calibration batch 1: input 0 has shape \(1, 3, 20, 20\)"):
        quantize(net, test_x[:1], bad, "onnx", subset_size=2)


def test_fewer_batches_than_asked(trained):
    net, test_x = trained
    with pytest.raises(ValueError, match=r"gave 5 input batches .* fewer than subset_size=300"):
        quantize(net, test_x[:1], [torch.randn(5, 3, 16, 16)], "openvino")


class _Uncapturable(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        return torch.linalg.svd(self.conv(x).flatten(2))[0]  # no ONNX export for SVD


def test_model_nncf_cannot_capture():
    with pytest.raises(ValueError, match="cannot be captured for quantization.*linalg_svd"):
        quantize(_Uncapturable().eval(), torch.randn(1, 3, 8, 8), [torch.randn(1, 3, 8, 8)], subset_size=1)


@pytest.mark.parametrize("module,backend", [("nncf", "onnx"), ("openvino", "openvino")])
def test_missing_install_says_how_to_install(trained, monkeypatch, module, backend):
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=f"pip install {module}"):
        quantize(trained[0], trained[1][:1], [trained[1][:1]], backend, subset_size=1)


def test_bad_arguments(trained):
    net, x = trained
    with pytest.raises(ValueError, match="choose one of: openvino, onnx"):
        quantize(net, x[:1], [x[:1]], "tflite", subset_size=1)
    with pytest.raises(TypeError, match="ignored_scope must be an nncf.IgnoredScope"):
        quantize(net, x[:1], [x[:1]], "onnx", subset_size=1, ignored_scope=["conv"])
    with pytest.raises(TypeError, match="calibration must be an iterable"):
        quantize(net, x[:1], x[:1], "onnx", subset_size=1)


def test_calibration_batches_from_loaders_and_dicts():
    x = torch.randn(1, 3, 4, 4)
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(torch.randn(10, 3, 4, 4), torch.zeros(10)), 5
    )
    got = list(CalibrationBatches(loader, [x]))  # (images, labels) batches of 5 -> 10 single images
    assert len(got) == 10 and got[0][0].shape == (1, 3, 4, 4)
    gen = ({"inp": torch.randn(2, 3, 4, 4)} for _ in range(2))
    batches = CalibrationBatches(gen, [x], input_names=["inp"])
    assert batches.count(100) == 4 and batches.count(100) == 4  # a generator is kept for re-iteration
    with pytest.raises(ValueError, match="keys \\['other'\\]"):
        list(CalibrationBatches([{"other": x}], [x], input_names=["inp"]))


def test_letterbox_keeps_aspect_ratio():
    image = np.full((20, 40, 3), 200, dtype=np.uint8)
    out = letterbox(image, (32, 32))
    assert out.shape == (32, 32, 3)
    assert (out[:8] == 114).all() and (out[-8:] == 114).all() and (out[8:24] == 200).all()


def test_load_calibration_from_files(tmp_path):
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 48, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    (tmp_path / "data.yaml").write_text(f"path: {tmp_path}\ntrain: images\nval: images\nnames: {{0: a}}\n")
    np.savez(tmp_path / "d.npz", x_train=np.zeros((5, 8, 8, 3), np.uint8), y_train=np.zeros(5))
    for source, n in (("images", 3), ("data.yaml", 3), ("d.npz", 5)):
        data = list(load_calibration(tmp_path / source, (1, 3, 16, 16)))
        assert len(data) == n and data[0].shape == (1, 3, 16, 16)
    first = next(iter(load_calibration(folder, (1, 3, 16, 16), normalize="imagenet")))
    assert first[0, 0, 8, 8].item() == pytest.approx((0 - 0.485) / 0.229, abs=1e-4)
    (tmp_path / "list.txt").write_text("0.png\n")
    with pytest.raises(ValueError, match="folder of images, an .npz file or an ultralytics"):
        load_calibration(tmp_path / "list.txt", (1, 3, 16, 16))
    with pytest.raises(ValueError, match="needs an N,3,H,W input"):
        load_calibration(folder, (1, 10))


def test_detection_head_decode_stays_float():
    names = [
        "/model.22/cv2.0/cv2.0.0/conv/Conv",
        "/model.22/dfl/conv/Conv",
        "/model.22/Sigmoid",
        "/model.22/Add_1",
        "/model.2/m.0/cv1/act/Sigmoid",
        "/model.220/Add",
    ]
    assert head_float_ops(names, ["model.22"]) == [
        "/model.22/dfl/conv/Conv",
        "/model.22/Sigmoid",
        "/model.22/Add_1",
    ]

    class Detect(nn.Module):  # named like ultralytics' head: found by class name
        pass

    model = nn.Sequential(nn.Conv2d(3, 3, 1), Detect())
    assert detection_head_names(model) == ["1"]


class Detect(nn.Module):
    """Named like ultralytics' head: a conv, then decode arithmetic that must stay float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(8, 6, 1)
        self.register_buffer("grid", torch.arange(64.0).view(1, 1, 64))

    def forward(self, x):
        y = self.conv(x).flatten(2)
        boxes = (y[:, :4] + self.grid) * 8.0
        return torch.cat([boxes, y[:, 4:].sigmoid()], 1)


def test_detection_head_keeps_decode_in_float(tmp_path, single_thread):
    import onnx

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Detect()).eval()
    calib = [torch.rand(1, 3, 8, 8) for _ in range(4)]
    res = quantize(model, calib[0], calib, "onnx", tmp_path / "d.onnx", subset_size=4)
    assert res.preset == "mixed" and "/2/Sigmoid" in res.ignored and "/2/conv/Conv" not in res.ignored
    graph = onnx.load(str(res.path)).graph
    producer = {o: n.op_type for n in graph.node for o in n.output}
    inputs = {n.name: [producer.get(i, "init") for i in n.input] for n in graph.node}
    assert "DequantizeLinear" in inputs["/2/conv/Conv"]  # the head's conv is INT8
    decode = [n for n in graph.node if n.name.startswith("/2/") and "/" not in n.name[3:]]
    assert {"/2/Sigmoid", "/2/Add", "/2/Mul", "/2/Slice_1"} <= {n.name for n in decode}
    readers = {i: n.op_type for n in graph.node for i in n.input}
    for node in decode:  # the decode arithmetic runs in float: none of its results is quantized
        assert all(readers.get(o) != "QuantizeLinear" for o in node.output), node.name
    # its input, the head conv's output, is requantized so that onnxruntime runs the conv in INT8
    assert res.requantized == ["/2/conv/Conv"]
    decode_inputs = {p for n in decode for p in inputs[n.name]}
    assert decode_inputs <= {"DequantizeLinear", "init", "Constant", *(n.op_type for n in decode)}


def test_int8_alignment(monkeypatch):
    monkeypatch.setattr(alignment, "cpu_vector_width", lambda: 16)
    assert alignment.int8_multiple("cpu") == 64 and alignment.default_round_to("ort", "int8") == 64
    monkeypatch.setattr(alignment, "cpu_vector_width", lambda: 8)
    assert alignment.int8_multiple() == 32 and alignment.default_round_to("openvino", "fp32") == 8
    assert alignment.int8_multiple("cuda") == 32 and alignment.default_round_to("trt", "int8") == 32
    with pytest.raises(ValueError, match="'cpu' or 'cuda'"):
        alignment.int8_multiple("tpu")


def _fake_tensorrt(version: str):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = mock.MagicMock()
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16", INT8="INT8")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    builder = mock.MagicMock()
    builder.build_serialized_network.return_value = b"engine"
    builder.create_builder_config.return_value.get_timing_cache.return_value.serialize.return_value = b"c"
    trt.Builder = mock.MagicMock(return_value=builder)
    trt.OnnxParser = mock.MagicMock()
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    return trt, builder


def _qdq_onnx(path, quantized: bool):
    import onnx
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    inits = []
    if quantized:
        inits = [
            helper.make_tensor("s", TensorProto.FLOAT, [], [0.1]),
            helper.make_tensor("z", TensorProto.INT8, [], [0]),
        ]
        nodes = [
            helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
            helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
        ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


@pytest.mark.parametrize("version,flags", [("10.13.0", 1 << 5), ("11.4.0", 0)])
def test_tensorrt_int8_builds_strongly_typed_from_qdq(version, flags, tmp_path, monkeypatch):
    from fxprune.deploy.backends import tensorrt as trt_backend

    trt, builder = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path))
    engine, strongly_typed = trt_backend.build_engine(_qdq_onnx(tmp_path / "q.onnx", True), "int8")
    assert engine == b"engine" and strongly_typed
    builder.create_network.assert_called_once_with(flags)
    builder.create_builder_config.return_value.set_flag.assert_not_called()  # no precision flags
    with pytest.raises(ValueError, match="no QuantizeLinear/DequantizeLinear nodes"):
        trt_backend.build_engine(_qdq_onnx(tmp_path / "f.onnx", False), "int8")
    with pytest.raises(ValueError, match="strongly typed"):
        trt_backend.build_engine(tmp_path / "q.onnx", "int8", strongly_typed=False)
