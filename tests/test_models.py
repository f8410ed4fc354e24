"""Model zoo, checkpoint loading, CIFAR-10 accuracy and model-spec loading."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import torch.fx as fx

from fxprune.data import cifar10_path, evaluate_accuracy, load_cifar10, shared_data_dir
from fxprune.models import (
    CheckpointError,
    create_model,
    default_input_shape,
    lane_resnet18,
    list_models,
    load_cifar_checkpoint,
    load_model,
)

DATA = shared_data_dir()
_NO_DATA = pytest.mark.skipif(DATA is None, reason="shared data folder ../shared/data not found "
                              "(set FXPRUNE_SHARED_DATA to run checkpoint and accuracy tests)")


def needs_data(test: Callable) -> Callable:
    """Mark a test as needing the shared data folder, skipping it when the folder is absent."""
    return pytest.mark.shared_data(_NO_DATA(test))


def _weights(depth: int) -> Path:
    paths = sorted((DATA / "weights").glob(f"resnet{depth}-*.th")) if DATA is not None else []
    if not paths:
        pytest.skip(f"resnet{depth} checkpoint not found in the shared data folder")
    return paths[0]


@pytest.mark.parametrize(
    ("name", "kwargs", "shape", "out_shape"),
    [
        ("cifar_resnet20", {}, (2, 3, 32, 32), (2, 10)),
        ("cifar_resnet56", {}, (2, 3, 32, 32), (2, 10)),
        ("cifar_resnet110", {"num_classes": 100}, (2, 3, 32, 32), (2, 100)),
        ("cifar_vgg16", {}, (2, 3, 32, 32), (2, 10)),
        ("cifar_vgg19", {}, (2, 3, 32, 32), (2, 10)),
        ("lane_resnet18", {"input_size": (96, 256)}, (2, 3, 96, 256), (2, 101, 56, 4)),
    ],
)
def test_zoo_builds_traces_and_shapes(name: str, kwargs: dict, shape: tuple, out_shape: tuple) -> None:
    model = create_model(name, **kwargs).eval()
    traced = fx.symbolic_trace(model)
    x = torch.randn(shape)
    with torch.no_grad():
        out, out_traced = model(x), traced(x)
    assert out.shape == out_shape
    torch.testing.assert_close(out_traced, out)


def test_registry() -> None:
    names = list_models()
    for name in ["cifar_resnet20", "cifar_resnet32", "cifar_resnet44", "cifar_resnet56", "cifar_resnet110",
                 "cifar_vgg16", "cifar_vgg19", "lane_resnet18"]:
        assert name in names
    assert default_input_shape("cifar_resnet56") == (1, 3, 32, 32)
    assert default_input_shape("lane_resnet18") == (1, 3, 288, 800)
    with pytest.raises(ValueError, match="registered models"):
        create_model("no_such_model")


def test_lane_aux_head_traces() -> None:
    model = lane_resnet18(input_size=(96, 256), use_aux=True).eval()
    traced = fx.symbolic_trace(model)
    with torch.no_grad():
        cls_out, seg_out = traced(torch.randn(1, 3, 96, 256))
    assert cls_out.shape == (1, 101, 56, 4)
    assert seg_out.shape == (1, 5, 12, 32)
    assert lane_resnet18().cls[0].in_features == 1800  # 8 * 9 * 25 for the 288x800 TuSimple input
    with pytest.raises(ValueError, match="multiples of 32"):
        lane_resnet18(input_size=(100, 256))


@needs_data
@pytest.mark.parametrize("depth", [20, 32, 44, 56])
def test_cifar_checkpoints_load_strictly(depth: int) -> None:
    model = create_model(f"cifar_resnet{depth}")
    load_cifar_checkpoint(model, _weights(depth))
    ref = torch.load(_weights(depth), map_location="cpu", weights_only=True)["state_dict"]
    torch.testing.assert_close(model.linear.weight, ref["module.linear.weight"])


@needs_data
def test_resnet56_accuracy() -> None:
    if cifar10_path() is None:
        pytest.skip("cifar10.npz not found in the shared data folder")
    full = os.environ.get("FXPRUNE_FULL_EVAL") == "1"
    x, y = load_cifar10("test", limit=None if full else 2000)
    model = load_cifar_checkpoint(create_model("cifar_resnet56"), _weights(56))
    acc = evaluate_accuracy(model, x, y)
    print(f"ResNet-56 CIFAR-10 accuracy on {len(y)} test images: {100 * acc:.2f} %")
    if full:
        assert round(100 * acc, 2) == 93.39
    else:
        assert acc >= 0.92


@needs_data
def test_mismatched_checkpoint_names_keys() -> None:
    with pytest.raises(ValueError, match=r"missing keys \(\d+\): layer1\.3\.conv1\.weight"):
        load_cifar_checkpoint(create_model("cifar_resnet56"), _weights(20))
    with pytest.raises(ValueError, match=r"unexpected keys .*layer1\.3\.conv1\.weight"):
        load_cifar_checkpoint(create_model("cifar_resnet20"), _weights(56))


def test_shape_mismatch_and_bad_files(tmp_path: Path) -> None:
    source = create_model("cifar_resnet20", num_classes=100)
    path = tmp_path / "wrapped.pt"
    torch.save({"model": {f"module.{k}": v for k, v in source.state_dict().items()}}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(2\): linear\.weight"):
        load_cifar_checkpoint(create_model("cifar_resnet20"), path)
    load_cifar_checkpoint(create_model("cifar_resnet20", num_classes=100), path)

    corrupt = tmp_path / "corrupt.th"
    corrupt.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match="corrupt"):
        load_cifar_checkpoint(create_model("cifar_resnet20"), corrupt)

    pickled = tmp_path / "whole_model.pt"
    torch.save(source, pickled)
    with pytest.raises(ValueError, match="weights_only"):
        load_cifar_checkpoint(create_model("cifar_resnet20"), pickled)
    with pytest.raises(ValueError, match="constructor spec"):
        load_model(str(pickled))
    with pytest.raises(ValueError, match="pretrained_path"):
        load_model(str(path))
    with pytest.raises(FileNotFoundError):
        load_cifar_checkpoint(create_model("cifar_resnet20"), tmp_path / "absent.th")


def test_load_model_specs(tmp_path: Path) -> None:
    model, shape = load_model("torchvision:resnet18")
    assert type(model).__name__ == "ResNet" and not model.training and shape == (1, 3, 224, 224)

    for spec in ["cifar_resnet20", "fxprune:cifar_resnet20", "fxprune.models.cifar_resnet:cifar_resnet20"]:
        model, shape = load_model(spec)
        assert type(model).__name__ == "CifarResNet" and shape == (1, 3, 32, 32)
        assert len(model.layer1) == 3

    path = tmp_path / "sd.pt"
    torch.save({"state_dict": model.state_dict()}, path)
    loaded, _ = load_model("cifar_resnet20", pretrained_path=str(path))
    torch.testing.assert_close(loaded.conv1.weight, model.conv1.weight)
    with pytest.raises(ValueError, match="does not fit"):
        load_model("cifar_resnet32", pretrained_path=str(path))

    for bad in ["not_a_model", "torchvision:not_a_model", "fxprune:not_a_model", "no_such_pkg_xyz:factory"]:
        with pytest.raises(ValueError, match=r"accepted model specs|unknown torchvision|cannot import"):
            load_model(bad)


@pytest.mark.skipif(importlib.util.find_spec("ultralytics") is None, reason="ultralytics not installed")
def test_load_model_ultralytics_yaml() -> None:
    model, shape = load_model("yolov8n.yaml")
    assert shape == (1, 3, 640, 640) and not model.training
    assert type(model).__name__ == "DetectionModel"
