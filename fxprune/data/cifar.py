"""CIFAR-10 from the shared data folder: locating it, loading normalized tensors, measuring accuracy."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "cifar10_path",
    "evaluate_accuracy",
    "load_cifar10",
    "normalize_images",
    "shared_data_dir",
]

# The shared CIFAR ResNet weights were trained on inputs normalised with ImageNet's statistics.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
SHARED_DATA_ENV = "FXPRUNE_SHARED_DATA"


def shared_data_dir(folder: str | os.PathLike | None = None) -> Path | None:
    """The data folder: ``folder`` if given, else ``$FXPRUNE_SHARED_DATA``; None when unset or missing."""
    chosen = folder if folder is not None else os.environ.get(SHARED_DATA_ENV)
    if not chosen:
        return None
    path = Path(chosen).expanduser()
    return path if path.is_dir() else None


def cifar10_path() -> Path | None:
    """Path of ``cifar10.npz`` in the shared data folder, or None when it is absent."""
    root = shared_data_dir()
    path = root / "cifar10.npz" if root is not None else None
    return path if path is not None and path.is_file() else None


def normalize_images(images: np.ndarray) -> torch.Tensor:
    """uint8 NHWC RGB images -> float32 NCHW tensor normalized as the shared weights expect."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    return ((x - mean) / std).contiguous()


def load_cifar10(
    split: str = "test", limit: int | None = None, path: str | os.PathLike[str] | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Load a CIFAR-10 split as ``(images, labels)``: normalized float32 NCHW and int64 labels.

    ``limit`` keeps only the first images of the split. Raises ``FileNotFoundError`` when
    ``cifar10.npz`` cannot be found.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    file = Path(path) if path is not None else cifar10_path()
    if file is None or not file.is_file():
        raise FileNotFoundError(
            f"cifar10.npz not found (looked in {file or 'the shared data folder'}); "
            f"set {SHARED_DATA_ENV} to the folder holding it"
        )
    with np.load(file) as data:
        images, labels = data[f"x_{split}"], data[f"y_{split}"]
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return normalize_images(images), torch.from_numpy(labels.astype(np.int64))


@torch.no_grad()
def evaluate_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 500) -> float:
    """Top-1 accuracy (fraction in [0, 1]) of ``model`` on ``(x, y)``, in eval mode on the model's device.

    The model's train/eval mode is restored afterwards.
    """
    if len(x) != len(y):
        raise ValueError(f"x and y differ in length: {len(x)} vs {len(y)}")
    if len(x) == 0:
        raise ValueError("cannot evaluate accuracy on an empty set")
    param = next(model.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    correct = 0
    try:
        for start in range(0, len(x), batch_size):
            out = model(x[start : start + batch_size].to(device))
            if isinstance(out, (tuple, list)):
                out = out[0]
            correct += (out.argmax(1).cpu() == y[start : start + batch_size]).sum().item()
    finally:
        model.train(was_training)
    return correct / len(x)
