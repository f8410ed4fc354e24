"""Turn a model spec string (zoo name, torchvision name, ultralytics file, factory path) into a model."""

from __future__ import annotations

import importlib
import inspect
import os
import re
import zipfile
from typing import Any

from torch import nn

from fxprune.models.checkpoint import (
    CheckpointError,
    extract_state_dict,
    load_state_dict_checked,
    read_checkpoint,
)
from fxprune.models.registry import default_input_shape, list_models, name_of_factory

__all__ = ["ACCEPTED_SPECS", "load_model"]

ACCEPTED_SPECS = """accepted model specs:
  cifar_resnet56 | fxprune:cifar_resnet56   a registered fxprune model ({names})
  torchvision:resnet50                       any torchvision.models.get_model name (weights=None)
  yolov8n.yaml | yolo11n-seg.yaml | run.pt   an ultralytics model yaml or checkpoint (needs ultralytics)
  package.module:factory                     a function called with no arguments that returns an nn.Module
Whole pickled models (torch.save(model)) are refused: pass a constructor spec plus a state dict."""

IMAGE_SHAPE = (1, 3, 224, 224)
YOLO_SHAPE = (1, 3, 640, 640)
_FACTORY_RE = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_][\w.]*$")
_CHECKPOINT_SUFFIXES = (".pt", ".pth", ".th", ".pkl", ".bin", ".ckpt")
_TORCHVISION_SHAPES = {
    "inception_v3": (1, 3, 299, 299),
    "quantized_inception_v3": (1, 3, 299, 299),
    "ssd300_vgg16": (1, 3, 300, 300),
    "ssdlite320_mobilenet_v3_large": (1, 3, 320, 320),
    "r3d_18": (1, 3, 16, 112, 112),
    "mc3_18": (1, 3, 16, 112, 112),
    "r2plus1d_18": (1, 3, 16, 112, 112),
}


def load_model(spec: str, pretrained_path: str | None = None) -> tuple[nn.Module, tuple[int, ...]]:
    """Build the model named by ``spec`` and return ``(model in eval mode, default input shape)``.

    ``pretrained_path`` is a state dict (raw or under ``state_dict``/``model``, optional ``module.``
    prefix) loaded with ``weights_only=True``; a mismatch raises ``CheckpointError`` naming the keys.
    Unknown specs raise ``ValueError`` listing the accepted forms.
    """
    spec = spec.strip()
    model, shape = _build(spec)
    if pretrained_path is not None:
        load_state_dict_checked(model, pretrained_path)
    return model.eval(), shape


def _build(spec: str) -> tuple[nn.Module, tuple[int, ...]]:
    lower = spec.lower()
    if lower.endswith((".yaml", ".yml")):
        return _ultralytics(spec), YOLO_SHAPE
    if os.path.isfile(spec) or lower.endswith(_CHECKPOINT_SUFFIXES):
        return _from_file(spec)
    if spec.startswith("torchvision:"):
        return _torchvision(spec.split(":", 1)[1])
    if spec.startswith("fxprune:"):
        return _registered(spec.split(":", 1)[1])
    if _FACTORY_RE.match(spec):
        return _factory(spec)
    if spec in list_models():
        return _registered(spec)
    raise ValueError(f"unknown model spec {spec!r}.\n" + _accepted())


def _accepted() -> str:
    return ACCEPTED_SPECS.format(names=", ".join(list_models()))


def _registered(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    if name not in list_models():
        raise ValueError(f"unknown fxprune model {name!r}.\n" + _accepted())
    from fxprune.models.registry import create_model

    return create_model(name), default_input_shape(name)


def _torchvision(name: str) -> tuple[nn.Module, tuple[int, ...]]:
    import torchvision.models as tvm

    if name not in tvm.list_models():
        raise ValueError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()")
    kwargs: dict[str, Any] = {"weights": None}
    shape = _TORCHVISION_SHAPES.get(name, IMAGE_SHAPE)
    if name in tvm.list_models(module=tvm.detection):
        kwargs["weights_backbone"] = None
        shape = _TORCHVISION_SHAPES.get(name, (1, 3, 640, 640))
    elif name in tvm.list_models(module=tvm.segmentation):
        kwargs["weights_backbone"] = None
        shape = (1, 3, 520, 520)
    elif name in tvm.list_models(module=tvm.video):
        shape = _TORCHVISION_SHAPES.get(name, (1, 3, 16, 224, 224))
    return tvm.get_model(name, **kwargs), shape


def _factory(spec: str) -> tuple[nn.Module, tuple[int, ...]]:
    module_name, attr_path = spec.split(":", 1)
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"cannot import module {module_name!r} from spec {spec!r}: {exc}") from exc
    for attr in attr_path.split("."):
        if not hasattr(obj, attr):
            raise ValueError(f"module {module_name!r} has no attribute {attr_path!r} (spec {spec!r})")
        obj = getattr(obj, attr)
    if not callable(obj):
        raise ValueError(f"{spec!r} does not name a callable factory")
    try:
        inspect.signature(obj).bind()
    except TypeError as exc:
        raise ValueError(f"factory {spec!r} must be callable without arguments ({exc})") from None
    except ValueError:  # no signature available (some builtins): just try the call
        pass
    model = obj()
    if not isinstance(model, nn.Module):
        raise TypeError(f"factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    name = name_of_factory(obj)
    if name is not None:
        return model, default_input_shape(name)
    shape = getattr(model, "default_input_shape", None) or getattr(obj, "default_input_shape", None)
    return model, tuple(shape) if isinstance(shape, (tuple, list)) else IMAGE_SHAPE


def _from_file(path: str) -> tuple[nn.Module, tuple[int, ...]]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"model file not found: {path}.\n" + _accepted())
    if _is_ultralytics_checkpoint(path):
        return _ultralytics(path), YOLO_SHAPE
    try:
        obj = read_checkpoint(path)
    except CheckpointError as exc:
        raise ValueError(f"cannot build a model from {path}: {exc}") from exc
    try:
        extract_state_dict(obj, path)
    except CheckpointError:
        raise ValueError(f"{path} holds no model or state dict.\n" + _accepted()) from None
    raise ValueError(
        f"{path} is a state dict, not a model spec: pass the constructor spec (e.g. cifar_resnet56, "
        f"torchvision:resnet50, package.module:factory) with pretrained_path={path!r}"
    )


def _is_ultralytics_checkpoint(path: str) -> bool:
    """Whether the pickle inside ``path`` references ultralytics classes (checked without unpickling)."""
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                pickles = [n for n in archive.namelist() if n.endswith("data.pkl")]
                return any(b"ultralytics" in archive.read(n) for n in pickles)
        with open(path, "rb") as fh:
            return b"ultralytics" in fh.read(1 << 20)
    except (OSError, zipfile.BadZipFile):
        return False


def _ultralytics(spec: str) -> nn.Module:
    """``ultralytics.YOLO(spec).model``; ultralytics unpickles ``.pt`` files itself, so trust them first."""
    os.environ.setdefault("YOLO_OFFLINE", "1")
    try:
        from ultralytics import YOLO
    except ImportError as exc:
        raise ImportError(
            f'model spec {spec!r} needs the ultralytics package: pip install -e ".[ultralytics]"'
        ) from exc
    return YOLO(spec).model
