"""``fxprune bench`` and the deployment options of ``fxprune prune`` on tiny models."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from fxprune.deploy import lut

from fxprune.cli import main
from tests.latency_helpers import AnalyticTable

pytest.importorskip("onnxruntime")


@pytest.fixture
def analytic_lut(monkeypatch, tmp_path):
    """Layer tables filled from a FLOP formula (no layer measurements) in a temporary cache folder."""
    monkeypatch.setenv("FXPRUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(lut.LatencyTable, "ensure", AnalyticTable.ensure)


def test_bench_dense_and_pruned_with_sweep_export_and_report(tmp_path: Path, capsys, single_thread) -> None:
    report, onnx_dir = tmp_path / "report", tmp_path / "onnx"
    argv = [
        "bench",
        "cifar_resnet20",
        "--backend",
        "ort",
        "--ratio",
        "0.5",
        "--round-to",
        "8",
        "--sweep",
        "0.3,0.6",
        "--export",
        str(onnx_dir),
        "--report",
        str(report),
        "--seconds",
        "0.3",
        "--repeats",
        "2",
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "speed-up" in out and "pruned" in out and "ort fp32, batch 1, 1 thread(s)" in out
    assert "latency against pruning ratio" in out
    assert (onnx_dir / "dense.onnx").is_file() and (onnx_dir / "pruned.onnx").is_file()
    text = (report / "report.md").read_text()
    for heading in ("Latency, dense and pruned", "Size", "Group widths", "ONNX export", "Latency against"):
        assert heading in text
    assert (report / "latency_sweep.png").stat().st_size > 0
    assert (report / "group_widths.png").stat().st_size > 0


def test_bench_onnx_file(tmp_path: Path, capsys, single_thread) -> None:
    from fxprune.deploy import export_onnx

    from fxprune.models import create_model

    path = export_onnx(create_model("cifar_resnet20"), torch.randn(1, 3, 32, 32), tmp_path / "m.onnx").path
    assert main(["bench", str(path), "--seconds", "0.2", "--repeats", "2"]) == 0
    assert "dense" in capsys.readouterr().out
    assert main(["bench", str(path), "--ratio", "0.5"]) == 2
    assert "need a model SPEC" in capsys.readouterr().err


def test_bench_unknown_and_missing_backends(capsys, monkeypatch) -> None:
    assert main(["bench", "cifar_resnet20", "--backend", "tflite"]) == 2
    assert "known backends" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["bench", "cifar_resnet20", "--backend", "trt"]) == 2
    err = capsys.readouterr().err
    assert "backend unavailable" in err and "TensorRT is not installed" in err


def test_prune_target_latency_with_backend_columns(
    tmp_path: Path, capsys, analytic_lut, single_thread
) -> None:
    report = tmp_path / "report"
    argv = [
        "prune",
        "cifar_resnet20",
        "--target-latency",
        "0.6x",
        "--backend",
        "ort",
        "--threads",
        "1",
        "--report",
        str(report),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "latency 0.6x on ort" in out and "ort latency, batch 1" in out and "verified" in out
    text = (report / "report.md").read_text()
    assert "Latency budget" in text and "Latency per backend" in text


def test_prune_bad_latency_target(capsys) -> None:
    assert main(["prune", "cifar_resnet20", "--target-latency", "fast"]) == 2
    assert "0.5x or 12ms" in capsys.readouterr().err
