"""Latency backends: one interface, measured conditions, and clear errors for what is not installed."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import types
from unittest import mock

import pytest
import torch
from fxprune.deploy import (
    BackendUnavailable,
    Measurement,
    get_backend,
    list_backends,
    measure_latency,
    speedup,
)
from fxprune.deploy.backends.base import Settings

from fxprune.models import create_model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return create_model("cifar_resnet20").eval(), torch.randn(1, 3, 32, 32)


def test_registry_lists_every_backend():
    assert {"ort", "openvino", "ort-cuda", "torch", "torch-compile", "trt", "trtexec"} <= set(list_backends())


def test_unknown_backend_lists_known_ones():
    with pytest.raises(ValueError, match="known backends: .*ort"):
        get_backend("tflite")


def test_ort_measurement_reports_its_conditions(tiny, single_thread):
    pytest.importorskip("onnxruntime")
    model, x = tiny
    res = measure_latency({"a": model, "b": model}, x, "ort", threads=1, warmup=2, iters=5, repeats=3)
    m = res["a"]
    assert isinstance(m, Measurement) and m.device
    assert len(m.repeat_medians) == len(res["b"].repeat_medians) == 3  # one median per interleaved round
    assert min(m.repeat_medians) <= m.median_ms <= max(m.repeat_medians)
    assert "ort fp32, batch 1, 1 thread(s), warm-up 2, 3x5 timed calls" in m.conditions()
    assert 0.5 < speedup(res["a"], res["b"]) < 2.0  # the same model twice


def test_onnx_file_source_and_auto_iterations(tiny, tmp_path, single_thread):
    pytest.importorskip("onnxruntime")
    from fxprune.deploy import export_onnx

    model, x = tiny
    path = export_onnx(model, x, tmp_path / "m.onnx", parity=False).path
    m = measure_latency({"file": path}, x, "ort", repeats=2, budget_s=0.2)["file"]
    timed_s = m.iters * m.repeats * m.median_ms / 1000
    if 3 < m.iters < 100:  # not at a bound: the count fits the time budget
        assert 0.2 / 5 < timed_s < 0.2 * 5, (m.iters, m.median_ms)
    tiny_budget = measure_latency({"file": path}, x, "ort", repeats=2, budget_s=1e-6)["file"]
    assert tiny_budget.iters == 3  # never fewer than 3 calls per round


def test_openvino_backend(tiny, single_thread):
    pytest.importorskip("openvino")
    model, x = tiny
    res = measure_latency({"m": model}, x, "openvino", threads=1, warmup=1, iters=3, repeats=2)
    assert res["m"].backend == "openvino" and len(res["m"].repeat_medians) == 2


def test_torch_cpu_backend(tiny, single_thread):
    model, x = tiny
    shapes = []
    handle = model.register_forward_hook(lambda mod, args, out: shapes.append(tuple(out.shape)))
    try:
        res = measure_latency(
            {"m": model}, x, get_backend("torch", device="cpu"), warmup=1, iters=3, repeats=2
        )
    finally:
        handle.remove()
    assert res["m"].backend == "torch" and len(res["m"].repeat_medians) == 2
    assert len(shapes) >= 1 + 3 * 2 and set(shapes) == {(1, 10)}  # warm-up and timed calls ran the model


def test_torch_backend_refuses_onnx_files(tiny, tmp_path):
    path = tmp_path / "m.onnx"
    path.write_bytes(b"")
    with pytest.raises(ValueError, match="runs PyTorch models"):
        measure_latency({"m": path}, tiny[1], get_backend("torch", device="cpu"))


def test_bad_precision_and_threads(tiny):
    with pytest.raises(ValueError, match="supports precision fp32"):
        measure_latency({"m": tiny[0]}, tiny[1], "ort", precision="fp16")
    with pytest.raises(ValueError, match="threads must be >= 1"):
        measure_latency({"m": tiny[0]}, tiny[1], "ort", threads=0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present")
def test_gpu_backends_without_gpu_say_why(tiny):
    with pytest.raises(BackendUnavailable, match="NVIDIA GPU"):
        measure_latency({"m": tiny[0]}, tiny[1], get_backend("torch", device="cuda"))
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(BackendUnavailable, match="onnxruntime-gpu"):
            measure_latency({"m": tiny[0]}, tiny[1], "ort-cuda")


def test_missing_tensorrt_says_how_to_install(tiny, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import fails even where it is installed
    with pytest.raises(BackendUnavailable, match=r"pypi\.nvidia\.com"):
        measure_latency({"m": tiny[0]}, tiny[1], "trt")


@pytest.mark.skipif(shutil.which("trtexec") is not None, reason="trtexec is installed")
def test_missing_trtexec(tiny):
    with pytest.raises(BackendUnavailable, match="trtexec is not on PATH"):
        measure_latency({"m": tiny[0]}, tiny[1], "trtexec")


def _fake_tensorrt(version: str):
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.Logger = mock.MagicMock()
    trt.BuilderFlag = types.SimpleNamespace(FP16="FP16")
    trt.NetworkDefinitionCreationFlag = types.SimpleNamespace(STRONGLY_TYPED=5)
    trt.MemoryPoolType = types.SimpleNamespace(WORKSPACE="WORKSPACE")
    builder = mock.MagicMock()
    builder.build_serialized_network.return_value = b"engine"
    config = builder.create_builder_config.return_value
    config.get_timing_cache.return_value.serialize.return_value = b"cache"
    trt.Builder = mock.MagicMock(return_value=builder)
    trt.OnnxParser = mock.MagicMock()
    trt.OnnxParser.return_value.parse_from_file.return_value = True
    return trt, builder, config


@pytest.mark.parametrize("version", ["10.13.0", "11.4.0"])
def test_tensorrt_builder_flags_per_version(version, tmp_path, monkeypatch):
    from fxprune.deploy.backends import tensorrt as trt_backend

    trt, builder, config = _fake_tensorrt(version)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path))
    engine, strongly_typed = trt_backend.build_engine(tmp_path / "m.onnx", "fp16")
    assert engine == b"engine"
    assert (tmp_path / "tensorrt" / f"timing-{version}.cache").read_bytes() == b"cache"
    backend = get_backend("trt")
    if version.startswith("10"):
        assert not strongly_typed
        config.set_flag.assert_called_once_with("FP16")
        builder.create_network.assert_called_once_with(0)
        assert backend.export_dtype("fp16") == torch.float32
    else:
        assert strongly_typed  # 11.x: no FP16 flag, the ONNX graph itself is fp16
        config.set_flag.assert_not_called()
        assert backend.export_dtype("fp16") == torch.float16


def _fake_trtexec(folder, banner: str):
    """A ``trtexec`` stand-in on PATH: prints the version banner, logs its arguments, writes the times."""
    script = folder / "trtexec"
    script.write_text(
        f"""#!{sys.executable}
import json, sys
print("&&&& RUNNING TensorRT.trtexec [TensorRT {banner}] # trtexec " + " ".join(sys.argv[1:]))
with open({str(folder / "args.log")!r}, "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")
for a in sys.argv[1:]:
    if a.startswith("--exportTimes="):
        n = int(next(b for b in sys.argv if b.startswith("--iterations=")).split("=")[1])
        json.dump([{{"latencyMs": 1.5}}] * n, open(a.split("=", 1)[1], "w"))
"""
    )
    script.chmod(0o755)
    return folder / "args.log"


@pytest.mark.parametrize("banner,major", [("v101300", 10), ("v110400", 11)])
def test_trtexec_precision_flags_per_version(banner, major, tiny, tmp_path, monkeypatch):
    pytest.importorskip("onnx")
    from fxprune.deploy import export_onnx
    from fxprune.deploy.backends import trtexec

    log = _fake_trtexec(tmp_path, banner)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    trtexec.trtexec_major.cache_clear()
    try:
        assert trtexec.trtexec_major() == major
        fp32 = export_onnx(*tiny, tmp_path / "m.onnx", parity=False).path
        res = measure_latency({"m": fp32}, tiny[1], "trtexec", precision="fp16", iters=4, repeats=1, warmup=0)
        assert res["m"].median_ms == 1.5 and res["m"].precision == "fp16"
        fp16_args = log.read_text().split()
        assert ("--fp16" in fp16_args) == (major == 10)  # 11.x has no precision flags
        assert get_backend("trtexec").export_dtype("fp16") == (
            torch.float16 if major == 11 else torch.float32
        )
        qdq = tmp_path / "q.onnx"
        _qdq_identity(qdq)
        cmd = trtexec.trtexec_command(qdq, "int8", 10, tmp_path / "t.json", cuda_graphs=False)
        assert ("--stronglyTyped" in cmd) == (major == 10)  # explicit quantization, strongly typed
        assert not {"--int8", "--fp16", "--best"} & set(cmd)
        with pytest.raises(ValueError, match="no QuantizeLinear/DequantizeLinear nodes"):
            trtexec.trtexec_command(fp32, "int8", 10, tmp_path / "t.json", cuda_graphs=False)
        if importlib.util.find_spec("nncf") is not None:  # a module is quantized to QDQ, then built
            res = measure_latency(
                {"m": tiny[0]},
                tiny[1],
                "trtexec",
                precision="int8",
                calibration=[tiny[1]],
                iters=2,
                repeats=1,
            )
            last = log.read_text().splitlines()[-1].split()
            assert res["m"].precision == "int8" and ("--stronglyTyped" in last) == (major == 10)
            assert "--int8" not in last and last[0].startswith("--onnx=") and last[0].endswith("m-int8.onnx")
    finally:
        trtexec.trtexec_major.cache_clear()


def _qdq_identity(path):
    import onnx
    from onnx import TensorProto, helper

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    zero = helper.make_tensor("z", TensorProto.INT8, [], [0])
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"]),
    ]
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 4]) for n in ("x", "y")]
    graph = helper.make_graph(nodes, "g", io[:1], io[1:], [scale, zero])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def test_ort_sessions_use_the_requested_threads(tiny, tmp_path):
    pytest.importorskip("onnxruntime")
    from fxprune.deploy import export_onnx

    model, x = tiny
    path = export_onnx(model, x, tmp_path / "m.onnx", parity=False).path
    backend = get_backend("ort")
    for settings, threads in ((Settings(), 1), (Settings(threads=3), 3)):  # one thread unless asked
        runner = backend.load(path, (x,), settings)
        try:
            options = runner.session.get_session_options()
            assert (options.intra_op_num_threads, options.inter_op_num_threads) == (threads, 1)
            runner()
        finally:
            runner.close()
