"""``fxprune export`` and ``fxprune bench --precision int8`` on a tiny model."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import fxprune
from fxprune.cli import main
from fxprune.models import create_model

pytest.importorskip("nncf")
pytest.importorskip("openvino")
pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def slim_and_calib(tmp_path_factory):
    """A pruned CIFAR ResNet-20 saved with fxprune.save, and an .npz of uint8 calibration images."""
    folder = tmp_path_factory.mktemp("export")
    torch.manual_seed(0)
    model = create_model("cifar_resnet20").eval()
    fxprune.prune(model, torch.randn(1, 3, 32, 32), ratio=0.5, round_to=8)
    fxprune.save(model, folder / "slim.pt", spec="cifar_resnet20")
    rng = np.random.default_rng(0)
    np.savez(folder / "calib.npz", x_train=rng.integers(0, 255, (24, 32, 32, 3), dtype=np.uint8))
    return folder


@pytest.mark.slow
def test_export_writes_every_file_with_parity_and_latency(slim_and_calib, tmp_path, capsys, single_thread):
    out = tmp_path / "out"
    argv = [
        "export",
        "cifar_resnet20",
        "--pruned",
        str(slim_and_calib / "slim.pt"),
        "--formats",
        "onnx,onnx-int8,openvino-int8",
        "--calib",
        str(slim_and_calib / "calib.npz"),
        "--calib-size",
        "8",
        "--seconds",
        "0.5",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "parity against torch" in text and "latency (median of interleaved runs)" in text
    for name in ("dense", "pruned"):
        for f in (f"{name}.onnx", f"{name}-int8.onnx", f"{name}-int8.xml", f"{name}-int8.bin"):
            assert (out / f).is_file(), f
    report = json.loads((out / "export.json").read_text())
    rows = {(r["model"], r["format"]): r for r in report["artifacts"]}
    assert len(rows) == 6
    assert rows[("pruned", "onnx")]["max rel error"] < 1e-4
    assert rows[("pruned", "onnx")]["MB"] < rows[("dense", "onnx")]["MB"]
    for key, r in rows.items():
        if key[1].endswith("int8"):
            assert 0 < r["max rel error"] < 0.25 and r["top-1 agreement"] >= 0.5  # 16 held-out images
    timed = {(r["runtime"], r["format"], r["model"]) for r in report["latency"]}
    assert ("ort", "onnx-int8", "pruned") in timed and ("openvino", "openvino-int8", "dense") in timed
    assert all(r["median ms"] > 0 for r in report["latency"])
    ir = ["bench", str(out / "dense-int8.xml"), "--pruned", str(out / "pruned-int8.xml")]
    assert main([*ir, "--backend", "openvino", "--repeats", "2", "--seconds", "0.5"]) == 0
    assert "speed-up" in capsys.readouterr().out  # OpenVINO IR files time like any model file


def test_export_errors(slim_and_calib, tmp_path, capsys, monkeypatch):
    base = ["export", "cifar_resnet20", "--out", str(tmp_path)]
    assert main([*base, "--formats", "onnx-int8"]) == 2
    assert "need calibration data: pass --calib" in capsys.readouterr().err
    assert main([*base, "--formats", "tflite"]) == 2
    assert "unknown format 'tflite'" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main([*base, "--formats", "onnx,engine"]) == 2
    err = capsys.readouterr().err
    assert "backend unavailable" in err and "TensorRT is not installed" in err
    assert not any(Path(tmp_path).glob("*.onnx"))  # nothing written before the check


@pytest.mark.slow
def test_bench_precision_int8_quantizes_on_the_fly(slim_and_calib, capsys, single_thread):
    argv = ["bench", "cifar_resnet20", "--pruned", str(slim_and_calib / "slim.pt"), "--precision", "int8"]
    quick = ["--repeats", "2", "--seconds", "0.5"]
    assert main([*argv, "--backend", "ort", *quick, "--calib", str(slim_and_calib / "calib.npz")]) == 0
    text = capsys.readouterr().out
    assert "timing on ort (quantized to INT8 first)" in text and "no --calib" not in text
    assert "int8" in text and "speed-up" in text
    assert main([*argv, "--backend", "openvino", *quick]) == 0
    assert "no --calib: INT8 models are calibrated on the example input only" in capsys.readouterr().out
    assert main([*argv, "--backend", "ort-cuda", *quick]) == 2  # refused before any work
    assert "supports precision fp32, fp16, not 'int8'" in capsys.readouterr().err
