"""Calibration data for post-training quantization: check and batch what users give, load it from files.

:class:`CalibrationBatches` turns an iterable of batches (tensors, arrays, tuples, dicts, or a DataLoader's
``(images, labels)`` pairs) into model inputs shaped exactly like the example inputs, splitting larger
batches and naming the first one whose shape does not fit. :func:`load_calibration` reads a folder of
images, an ``.npz`` file or an ultralytics dataset yaml (its val split), with ultralytics' letterbox.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "IMAGE_SUFFIXES",
    "CalibrationBatches",
    "ImageFiles",
    "NpzImages",
    "dataset_yaml_images",
    "letterbox",
    "load_calibration",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
_NORMS = {"imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}
Normalize = str | tuple[Sequence[float], Sequence[float]] | None


def _as_array(value: Any, where: str) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().float().numpy() if value.is_floating_point() else value.cpu().numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype == np.float64 else value
    raise TypeError(f"{where} is a {type(value).__name__}; expected a torch.Tensor or numpy array")


class CalibrationBatches:
    """Re-iterable model inputs from ``source``, each a tuple of arrays shaped like ``example``.

    ``transform`` (optional) maps one item of ``source`` to the model input first. A tuple item longer than
    the model's input list whose leading entries fit (a DataLoader's ``(images, labels)``) keeps those
    entries; a dict item is ordered by ``input_names``; a batch whose size is a multiple of the example's
    is split. One-shot iterators are read once and kept in memory.
    """

    def __init__(
        self,
        source: Iterable[Any],
        example: Sequence[torch.Tensor],
        transform: Callable[[Any], Any] | None = None,
        input_names: Sequence[str] = (),
    ) -> None:
        if isinstance(source, (torch.Tensor, np.ndarray)) or not isinstance(source, Iterable):
            raise TypeError(
                "calibration must be an iterable of batches (a list of tensors, a DataLoader, a "
                f"generator) or a path to load with load_calibration, not {type(source).__name__}"
            )
        self.shapes = [tuple(t.shape) for t in example]
        self.transform, self.input_names = transform, list(input_names)
        self.source: Iterable[Any] = list(source) if iter(source) is source else source

    def __iter__(self) -> Iterator[tuple[np.ndarray, ...]]:
        for i, item in enumerate(self.source):
            yield from self._split(self._inputs(item, i), i)

    def count(self, limit: int) -> int:
        """Number of model inputs, up to ``limit`` (every one is shape-checked on the way)."""
        n = 0
        for _ in self:
            n += 1
            if n >= limit:
                break
        return n

    def _inputs(self, item: Any, i: int) -> list[np.ndarray]:
        if self.transform is not None:
            item = self.transform(item)
        if isinstance(item, dict):
            missing = [k for k in self.input_names if k not in item]
            if missing or len(self.input_names) != len(self.shapes):
                raise ValueError(
                    f"calibration batch {i} is a dict with keys {sorted(item)}; the model's inputs are "
                    f"{self.input_names or 'positional'}"
                )
            item = [item[k] for k in self.input_names]
        parts = list(item) if isinstance(item, (tuple, list)) else [item]
        if len(parts) > len(self.shapes):
            parts = parts[: len(self.shapes)]  # (images, labels) from a DataLoader: labels are not inputs
        if len(parts) != len(self.shapes):
            raise ValueError(
                f"calibration batch {i} has {len(parts)} inputs, the model takes {len(self.shapes)}"
            )
        return [_as_array(p, f"calibration batch {i}, input {k}") for k, p in enumerate(parts)]

    def _split(self, arrays: list[np.ndarray], i: int) -> Iterator[tuple[np.ndarray, ...]]:
        chunks = None
        for k, (a, want) in enumerate(zip(arrays, self.shapes)):
            fits = a.ndim == len(want) and a.shape[1:] == want[1:] and want and a.shape[0] % want[0] == 0
            if not fits or (chunks is not None and a.shape[0] // want[0] != chunks):
                raise ValueError(
                    f"calibration batch {i}: input {k} has shape {tuple(a.shape)}, the example input "
                    f"{want} (batches must match it, or stack a multiple of its batch size)"
                )
            chunks = a.shape[0] // want[0]
        for c in range(chunks or 0):
            yield tuple(
                np.ascontiguousarray(a[c * w[0] : (c + 1) * w[0]]) for a, w in zip(arrays, self.shapes)
            )


def forward_input_names(model: torch.nn.Module) -> list[str]:
    """Positional parameter names of ``model.forward`` (used to order dict batches)."""
    params = inspect.signature(model.forward).parameters.values()
    return [p.name for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]


def letterbox(image: np.ndarray, size: tuple[int, int], pad: int = 114) -> np.ndarray:
    """Resize an HWC uint8 image to fit ``size`` (h, w) keeping its aspect ratio, centred on grey padding."""
    from PIL import Image

    h, w = size
    ih, iw = image.shape[:2]
    r = min(h / ih, w / iw)
    nh, nw = max(1, round(ih * r)), max(1, round(iw * r))
    resized = (
        np.asarray(Image.fromarray(image).resize((nw, nh), Image.BILINEAR)) if (nh, nw) != (ih, iw) else image
    )
    out = np.full((h, w, image.shape[2]), pad, dtype=np.uint8)
    top, left = (h - nh) // 2, (w - nw) // 2
    out[top : top + nh, left : left + nw] = resized
    return out


def _to_tensor(images: np.ndarray, normalize: Normalize) -> torch.Tensor:
    """uint8 NHWC RGB -> float32 NCHW in [0, 1], then ``(x - mean) / std`` when ``normalize`` is given."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    if normalize is None:
        return x.contiguous()
    if isinstance(normalize, str):
        if normalize not in _NORMS:
            raise ValueError(
                f"unknown normalization {normalize!r}; known: {', '.join(_NORMS)} or (mean, std)"
            )
        normalize = _NORMS[normalize]
    mean, std = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in normalize)
    return ((x - mean) / std).contiguous()


class ImageFiles:
    """Image files as batches shaped ``shape`` (N, 3, H, W): RGB, letterboxed, scaled to [0, 1]."""

    def __init__(self, files: Sequence[Path], shape: Sequence[int], normalize: Normalize = None) -> None:
        if not files:
            raise ValueError("no image files to calibrate on")
        self.files, self.shape, self.normalize = list(files), tuple(shape), normalize

    def __len__(self) -> int:
        return len(self.files) // self.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        from PIL import Image

        n, size = self.shape[0], (self.shape[2], self.shape[3])
        for start in range(0, len(self) * n, n):
            batch = []
            for f in self.files[start : start + n]:
                with Image.open(f) as im:
                    batch.append(letterbox(np.asarray(im.convert("RGB")), size))
            yield _to_tensor(np.stack(batch), self.normalize)


class NpzImages:
    """Images from an ``.npz`` array (uint8 NHWC or float NCHW) as batches shaped ``shape``."""

    def __init__(self, path: Path, shape: Sequence[int], key: str | None = None, normalize: Normalize = None):
        with np.load(path) as data:
            keys = list(data.keys())
            if key is None:
                key = next((k for k in ("x_train", "x", "images", "x_test") if k in keys), None)
                key = key or next((k for k in keys if data[k].ndim == 4), None)
            if key not in keys:
                raise ValueError(f"{path} has no image array {key!r}; arrays: {', '.join(keys)}")
            self.images = data[key]
        self.shape, self.normalize, self.key = tuple(shape), normalize, key
        if self.images.ndim != 4:
            raise ValueError(f"{path}[{key}] has shape {self.images.shape}; expected N images (4 dims)")

    def __len__(self) -> int:
        return len(self.images) // self.shape[0]

    def __iter__(self) -> Iterator[torch.Tensor]:
        n, size = self.shape[0], (self.shape[2], self.shape[3])
        for start in range(0, len(self) * n, n):
            chunk = self.images[start : start + n]
            if chunk.dtype != np.uint8:  # float arrays are taken as model-ready NCHW
                yield torch.from_numpy(np.ascontiguousarray(chunk, dtype=np.float32))
                continue
            if chunk.shape[1:3] != size:
                chunk = np.stack([letterbox(im, size) for im in chunk])
            yield _to_tensor(chunk, self.normalize)


def dataset_yaml_images(path: str | os.PathLike[str], split: str = "val") -> list[Path]:
    """Image files of the ``split`` of an ultralytics dataset yaml (``path:`` + ``val:`` folders or lists)."""
    import yaml

    path = Path(path)
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or split not in spec:
        raise ValueError(f"{path} is not an ultralytics dataset yaml with a {split!r} split")
    root = Path(spec.get("path") or ".")
    root = root if root.is_absolute() else (path.parent / root).resolve()
    entries = spec[split] if isinstance(spec[split], list) else [spec[split]]
    files: list[Path] = []
    for entry in entries:
        p = Path(entry) if Path(entry).is_absolute() else root / entry
        if p.is_dir():
            files += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        elif p.suffix == ".txt" and p.is_file():
            files += [root / line.strip() for line in p.read_text().splitlines() if line.strip()]
        else:
            raise FileNotFoundError(f"{split} split of {path}: {p} is neither a folder nor a .txt list")
    return files


def load_calibration(
    source: str | os.PathLike[str],
    shape: Sequence[int],
    *,
    normalize: Normalize = None,
    limit: int | None = None,
) -> ImageFiles | NpzImages:
    """Calibration batches of ``shape`` from a folder of images, an ``.npz`` or an ultralytics dataset yaml.

    Images are RGB, letterboxed to the input size (as ultralytics preprocesses) and scaled to [0, 1];
    ``normalize="imagenet"`` or ``(mean, std)`` then standardises them. ``limit`` keeps the first images.
    """
    path = Path(source)
    if len(shape) != 4 or shape[1] != 3:
        raise ValueError(f"image calibration needs an N,3,H,W input, the model takes {tuple(shape)}")
    if not path.exists():
        raise FileNotFoundError(f"calibration data {path} does not exist")
    if path.is_dir():
        data = ImageFiles(
            sorted(f for f in path.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES), shape, normalize
        )
    elif path.suffix == ".npz":
        data = NpzImages(path, shape, normalize=normalize)
    elif path.suffix in (".yaml", ".yml"):
        data = ImageFiles(dataset_yaml_images(path), shape, normalize)
    else:
        raise ValueError(
            f"calibration data {path}: expected a folder of images, an .npz file or an ultralytics "
            "dataset yaml"
        )
    if limit is not None:
        if isinstance(data, ImageFiles):
            data.files = data.files[: limit * shape[0]]
        else:
            data.images = data.images[: limit * shape[0]]
    return data
