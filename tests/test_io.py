"""Tests for fxprune.save / fxprune.load: pruned models round-trip into freshly built dense models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.models import create_model
from fxprune.verify.compare import flatten_outputs

pytestmark = pytest.mark.usefixtures("single_thread")


def _pruned(factory, shape: tuple[int, ...], ratio: float = 0.5) -> tuple[nn.Module, torch.Tensor]:
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(*shape)
    fxprune.prune(model, x, ratio=ratio)
    return model, x


def _outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    with torch.no_grad():
        return [t for _, t in flatten_outputs(model.eval()(x))]


def _same(a: nn.Module, b: nn.Module, x: torch.Tensor) -> bool:
    oa, ob = _outputs(a, x), _outputs(b, x)
    return len(oa) == len(ob) and all(torch.equal(u, v) for u, v in zip(oa, ob))


def _resnet20() -> nn.Module:
    return create_model("cifar_resnet20")


@pytest.mark.parametrize(
    "factory, shape",
    [(torchvision.models.resnet18, (1, 3, 64, 64)), (_resnet20, (2, 3, 32, 32))],
    ids=["resnet18", "cifar_resnet20"],
)
def test_round_trip_into_fresh_constructor(tmp_path: Path, factory, shape) -> None:
    model, x = _pruned(factory, shape)
    path = tmp_path / "pruned.pt"
    fxprune.save(model, path, spec="test-spec")
    loaded = fxprune.load(factory, path)
    assert type(loaded) is type(model)
    assert _same(model, loaded, x)
    params, loaded_params = list(model.named_parameters()), list(loaded.named_parameters())
    assert len(params) == len(loaded_params)
    for (name, p), (name2, q) in zip(params, loaded_params):
        assert name == name2 and p.shape == q.shape and isinstance(q, nn.Parameter)
    buffers, loaded_buffers = list(model.named_buffers()), list(loaded.named_buffers())
    assert len(buffers) == len(loaded_buffers)
    for (name, b), (_, c) in zip(buffers, loaded_buffers):
        assert b.shape == c.shape and not isinstance(c, nn.Parameter), name
    # the fresh model was dense: loading gave it the pruned shapes
    assert sum(q.numel() for _, q in loaded_params) < sum(q.numel() for q in factory().parameters())
    # layer attributes follow the new shapes
    for name, m in loaded.named_modules():
        if isinstance(m, nn.Conv2d):
            assert m.out_channels == m.weight.shape[0], name
            assert m.in_channels == m.weight.shape[1] * m.groups, name
        if isinstance(m, nn.BatchNorm2d):
            assert m.num_features == m.weight.shape[0], name
        if isinstance(m, nn.Linear):
            assert (m.out_features, m.in_features) == tuple(m.weight.shape), name
    saved = torch.load(path, map_location="cpu", weights_only=True)
    assert saved["format"] == "fxprune/1" and saved["spec"] == "test-spec"
    assert saved["shapes"]["conv1.weight"] == list(model.conv1.weight.shape)


def test_load_into_module_instance_and_requires_grad(tmp_path: Path) -> None:
    model, x = _pruned(_resnet20, (1, 3, 32, 32))
    model.linear.weight.requires_grad_(False)
    fxprune.save(model, tmp_path / "m.pt")
    fresh = _resnet20()
    fresh.linear.weight.requires_grad_(False)
    loaded = fxprune.load(fresh, tmp_path / "m.pt")
    assert loaded is fresh
    assert not loaded.linear.weight.requires_grad and loaded.conv1.weight.requires_grad
    assert _same(model, loaded, x)


def test_load_from_spec_string(tmp_path: Path) -> None:
    model, x = _pruned(_resnet20, (1, 3, 32, 32))
    fxprune.save(model, tmp_path / "m.pt", spec="cifar_resnet20")
    assert _same(model, fxprune.load("cifar_resnet20", tmp_path / "m.pt"), x)


class _ScaledNet(nn.Module):
    """A per-channel scale kept in a non-persistent buffer (not in the state dict, sliced by pruning)."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 16, 3, padding=1)
        self.c2 = nn.Conv2d(16, 4, 1)
        self.register_buffer("scale", torch.linspace(0.5, 2.0, 16).view(1, 16, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c2(torch.relu(self.c1(x)) * self.scale)


def test_non_persistent_buffer_round_trip(tmp_path: Path) -> None:
    model, x = _pruned(_ScaledNet, (1, 3, 8, 8))
    assert model.scale.shape[1] == 8
    fxprune.save(model, tmp_path / "n.pt")
    loaded = fxprune.load(_ScaledNet, tmp_path / "n.pt")
    assert "scale" not in loaded.state_dict() and torch.equal(loaded.scale, model.scale)
    assert _same(model, loaded, x)


def test_pickled_pruned_model_round_trip(tmp_path: Path) -> None:
    model, x = _pruned(torchvision.models.resnet18, (1, 3, 64, 64))
    torch.save(model, tmp_path / "whole.pt")
    loaded = torch.load(tmp_path / "whole.pt", weights_only=False)
    assert type(loaded) is type(model)
    assert _same(model, loaded, x)


def test_mismatched_architecture_is_refused(tmp_path: Path) -> None:
    model, _ = _pruned(_resnet20, (1, 3, 32, 32))
    fxprune.save(model, tmp_path / "r20.pt")
    with pytest.raises(ValueError, match="missing keys") as info:
        fxprune.load(torchvision.models.resnet18, tmp_path / "r20.pt")
    assert "unexpected keys" in str(info.value) and "layer2.0.downsample.0.weight" in str(info.value)


def test_unexplainable_shape_is_refused(tmp_path: Path) -> None:
    model, _ = _pruned(_resnet20, (1, 3, 32, 32))
    fxprune.save(model, tmp_path / "r20.pt")
    obj = torch.load(tmp_path / "r20.pt", weights_only=True)
    obj["shapes"]["linear.weight"] = [10, 64, 1]
    obj["state_dict"]["linear.weight"] = torch.zeros(10, 64, 1)
    torch.save(obj, tmp_path / "bad-ndim.pt")
    with pytest.raises(ValueError, match="linear.weight.*dims"):
        fxprune.load(_resnet20, tmp_path / "bad-ndim.pt")
    obj["shapes"]["linear.weight"] = [10, 65]
    obj["state_dict"]["linear.weight"] = torch.zeros(10, 65)
    torch.save(obj, tmp_path / "bad-grow.pt")
    with pytest.raises(ValueError, match="larger than the model"):
        fxprune.load(_resnet20, tmp_path / "bad-grow.pt")


def test_corrupt_and_foreign_files_are_refused(tmp_path: Path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(os.urandom(256))
    with pytest.raises(ValueError, match="corrupt"):
        fxprune.load(_resnet20, corrupt)
    truncated = tmp_path / "truncated.pt"
    model, _ = _pruned(_resnet20, (1, 3, 32, 32))
    fxprune.save(model, tmp_path / "ok.pt")
    truncated.write_bytes((tmp_path / "ok.pt").read_bytes()[:1000])
    with pytest.raises(ValueError):
        fxprune.load(_resnet20, truncated)
    plain = tmp_path / "plain.pt"
    torch.save(_resnet20().state_dict(), plain)
    with pytest.raises(ValueError, match="not an fxprune file"):
        fxprune.load(_resnet20, plain)
    whole = tmp_path / "whole.pt"
    torch.save(model, whole)
    with pytest.raises(ValueError, match="pickled Python objects"):
        fxprune.load(_resnet20, whole)
    with pytest.raises(FileNotFoundError):
        fxprune.load(_resnet20, tmp_path / "missing.pt")


@pytest.mark.slow
def test_yolov8n_round_trip(tmp_path: Path) -> None:
    pytest.importorskip("ultralytics")
    from fxprune.models import load_model

    def factory() -> nn.Module:
        return load_model("yolov8n.yaml")[0]

    model, x = _pruned(factory, (1, 3, 64, 64), ratio=0.3)
    fxprune.save(model, tmp_path / "yolo.pt", spec="yolov8n.yaml")
    loaded = fxprune.load(factory, tmp_path / "yolo.pt")
    assert type(loaded) is type(model)
    assert _same(model, loaded, x)
