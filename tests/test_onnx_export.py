"""ONNX export: checker and onnxruntime parity with torch, dense and slim, zoo, torchvision and YOLO."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from fxprune.deploy import export_onnx

import fxprune
from fxprune.models.spec import load_model
from fxprune.verify.compare import flatten_outputs

pytest.importorskip("onnxruntime")

CASES = {
    "cifar_resnet20": ("cifar_resnet20", (1, 3, 32, 32)),
    "mobilenet_v3_small": ("torchvision:mobilenet_v3_small", (1, 3, 64, 64)),
    "resnet18": ("torchvision:resnet18", (1, 3, 64, 64)),
    "lane_resnet18": ("lane_resnet18", (1, 3, 288, 800)),
    "yolov8n": ("yolov8n.yaml", (1, 3, 128, 128)),
}


@pytest.mark.parametrize("name", list(CASES))
def test_export_dense_and_slim_match_torch(name, tmp_path, single_thread):
    spec, shape = CASES[name]
    if spec.endswith(".yaml"):
        pytest.importorskip("ultralytics")
    torch.manual_seed(0)
    model, _ = load_model(spec)
    x = torch.randn(*shape)
    dense = copy.deepcopy(model)
    fxprune.prune(model, x, 0.4, round_to=8)
    for label, m in (("dense", dense), ("slim", model)):
        with torch.no_grad():
            n_outputs = len(flatten_outputs(m.eval()(x)))
        res = export_onnx(m, x, tmp_path / f"{label}.onnx")
        assert res.checked and res.path.is_file()
        assert res.outputs == n_outputs  # every output tensor was compared
        assert res.max_rel_error is not None and res.max_rel_error < 1e-4, (label, res.max_rel_error)
        assert res.max_abs_error is not None and np.isfinite(res.max_abs_error)
        assert res.as_dict()["exporter"] == "torchscript"


def test_dynamic_batch_runs_other_batch_sizes(tmp_path, single_thread):
    import onnxruntime as ort

    model, _ = load_model("cifar_resnet20")
    res = export_onnx(model, torch.randn(1, 3, 32, 32), tmp_path / "m.onnx", dynamic_batch=True)
    sess = ort.InferenceSession(str(res.path), providers=["CPUExecutionProvider"])
    x = torch.randn(3, 3, 32, 32)
    (out,) = sess.run(None, {"input": x.numpy()})
    with torch.no_grad():
        ref = model(x).numpy()
    assert out.shape == (3, 10)
    assert np.abs(out - ref).max() < 1e-4


def test_keyword_inputs_are_refused(tmp_path):
    model, _ = load_model("cifar_resnet20")
    with pytest.raises(ValueError, match="positional"):
        export_onnx(model, {"x": torch.randn(1, 3, 32, 32)}, tmp_path / "m.onnx")
