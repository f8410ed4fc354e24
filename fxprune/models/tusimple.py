"""TuSimple lane labels (``label_data_*.json``) and the UFLD training targets made from them.

A label file holds one JSON object per line: ``raw_file`` (the frame, relative to the dataset root),
``h_samples`` (image rows, 160..710 step 10 in the 1280x720 frames) and ``lanes`` (one list of x per
h_sample, ``-2`` where the lane is absent). UFLD trains on:

* row-anchor classification targets ``(row_anchors, lanes)``: the gridding cell of each lane at each
  anchor row (``griding_num`` cells over the image width), or ``griding_num`` (the "no lane" class);
* segmentation targets for the auxiliary head ``(H / 8, W / 8)``: ``0`` background, ``k`` lane slot
  ``k - 1`` drawn as a thick polyline.

Lanes go to slots as in UFLD's TuSimple conversion: left lanes (negative image slope) from the centre
outwards take slots 1, 0; right lanes take slots 2, 3; lanes shorter than 90 pixels are dropped.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "TUSIMPLE_IMAGE_SIZE",
    "TUSIMPLE_ROW_ANCHORS",
    "LaneFrame",
    "TusimpleLaneDataset",
    "flip_frame",
    "lane_slots",
    "normalize_image",
    "read_tusimple_labels",
    "ufld_targets",
]

TUSIMPLE_IMAGE_SIZE = (720, 1280)  # (H, W) of the TuSimple frames
TUSIMPLE_ROW_ANCHORS = tuple(range(160, 711, 10))  # UFLD's 56 anchors (64..284 on 288 rows) = h_samples
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
MIN_LANE_LENGTH = 90.0  # UFLD's conversion drops shorter lanes


@dataclass
class LaneFrame:
    """One labelled frame: ``lanes[i][j]`` is the x of lane ``i`` at row ``h_samples[j]`` (< 0: absent)."""

    raw_file: str
    h_samples: np.ndarray
    lanes: list[np.ndarray]
    image_size: tuple[int, int] = TUSIMPLE_IMAGE_SIZE

    def points(self, lane: int) -> tuple[np.ndarray, np.ndarray]:
        """(x, y) of the labelled points of lane ``lane``."""
        xs = self.lanes[lane]
        keep = xs >= 0
        return xs[keep].astype(np.float64), self.h_samples[keep].astype(np.float64)


def _label_files(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[Path]:
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if path.is_dir():
            files = sorted(Path(p) for p in glob.glob(str(path / "label_data_*.json")))
            if not files:
                raise ValueError(f"no label_data_*.json file in {path}")
            return files
        return [path]
    return [Path(p) for p in source]


def read_tusimple_labels(source: str | os.PathLike | Sequence[str | os.PathLike]) -> list[LaneFrame]:
    """Frames of TuSimple label files: a file, a list of files, or a folder holding ``label_data_*.json``."""
    frames = []
    for path in _label_files(source):
        if not path.is_file():
            raise FileNotFoundError(f"TuSimple label file not found: {path}")
        with open(path) as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                frames.append(_parse_line(line, f"{path}:{lineno}"))
    return frames


def _parse_line(line: str, where: str) -> LaneFrame:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as err:
        raise ValueError(f"{where}: not a JSON object ({err})") from None
    missing = [k for k in ("lanes", "h_samples", "raw_file") if k not in row]
    if missing:
        raise ValueError(
            f"{where}: missing key(s) {missing}; a TuSimple label has lanes, h_samples, raw_file"
        )
    h = np.asarray(row["h_samples"], dtype=np.int64)
    lanes = [np.asarray(lane, dtype=np.int64) for lane in row["lanes"]]
    bad = [i for i, lane in enumerate(lanes) if lane.shape != h.shape]
    if bad:
        raise ValueError(f"{where}: lane(s) {bad} do not have one x per h_sample ({len(h)})")
    return LaneFrame(str(row["raw_file"]), h, lanes)


def flip_frame(frame: LaneFrame) -> LaneFrame:
    """The label of the horizontally mirrored frame (slots are re-assigned by :func:`lane_slots`)."""
    width = frame.image_size[1]
    lanes = [np.where(xs >= 0, width - 1 - xs, xs) for xs in frame.lanes]
    return LaneFrame(frame.raw_file, frame.h_samples.copy(), lanes, frame.image_size)


def _lane_angle(frame: LaneFrame, lane: int) -> float | None:
    """atan of the image slope dy/dx (UFLD's ``calc_k``); None for lanes shorter than 90 px."""
    xs, ys = frame.points(lane)
    if len(xs) < 2 or np.hypot(xs[0] - xs[-1], ys[0] - ys[-1]) < MIN_LANE_LENGTH:
        return None
    if np.ptp(xs) == 0:
        return float(np.pi / 2)
    return float(np.arctan(np.polyfit(xs, ys, 1)[0]))


def lane_slots(frame: LaneFrame, num_lanes: int = 4) -> list[int | None]:
    """Slot of every lane of ``frame`` (None: not used), as UFLD's TuSimple conversion assigns them."""
    if num_lanes < 2 or num_lanes % 2:
        raise ValueError(f"num_lanes must be an even number >= 2, got {num_lanes}")
    half = num_lanes // 2
    angles = [_lane_angle(frame, i) for i in range(len(frame.lanes))]
    left = sorted((a, i) for i, a in enumerate(angles) if a is not None and a < 0)  # steepest = centre
    right = sorted(((a, i) for i, a in enumerate(angles) if a is not None and a > 0), reverse=True)
    slots: list[int | None] = [None] * len(frame.lanes)
    for rank, (_, i) in enumerate(left[:half]):
        slots[i] = half - 1 - rank
    for rank, (_, i) in enumerate(right[:half]):
        slots[i] = half + rank
    return slots


def _x_at_rows(frame: LaneFrame, lane: int, rows: np.ndarray) -> np.ndarray:
    """x of the lane at image rows ``rows`` (linear between labelled points), -1 outside its extent."""
    xs, ys = frame.points(lane)
    out = np.full(len(rows), -1.0)
    if len(xs) == 0:
        return out
    inside = (rows >= ys.min()) & (rows <= ys.max())
    out[inside] = np.interp(rows[inside], ys, xs) if len(xs) > 1 else xs[0]
    return out


def ufld_targets(
    frame: LaneFrame,
    griding_num: int = 100,
    num_lanes: int = 4,
    row_anchors: Sequence[float] = TUSIMPLE_ROW_ANCHORS,
    seg_size: tuple[int, int] | None = (36, 100),
    seg_thickness: float = 16.0,
) -> tuple[np.ndarray, np.ndarray | None]:
    """UFLD targets of one frame: ``cls`` (row_anchors, num_lanes) int64 and ``seg`` (seg_size) int64.

    ``row_anchors`` are rows of the original image. A lane's cell at an anchor is
    ``x // ((W - 1) / (griding_num - 1))`` (UFLD's gridding); outside the lane's labelled extent or the
    image it is ``griding_num``, the "no lane" class. ``seg`` draws slot ``k`` with value ``k + 1`` as a
    polyline ``seg_thickness`` original pixels wide (None when ``seg_size`` is None).
    """
    if griding_num < 2:
        raise ValueError(f"griding_num must be >= 2, got {griding_num}")
    height, width = frame.image_size
    rows = np.asarray(row_anchors, dtype=np.float64)
    cell_w = (width - 1) / (griding_num - 1)
    cls = np.full((len(rows), num_lanes), griding_num, dtype=np.int64)
    slots = lane_slots(frame, num_lanes)
    for lane, slot in enumerate(slots):
        if slot is None:
            continue
        x = _x_at_rows(frame, lane, rows)
        ok = (x >= 0) & (x <= width - 1)
        cls[ok, slot] = (x[ok] // cell_w).astype(np.int64)
    if seg_size is None:
        return cls, None
    return cls, _segmentation(frame, slots, seg_size, seg_thickness)


def _segmentation(
    frame: LaneFrame, slots: list[int | None], seg_size: tuple[int, int], thickness: float
) -> np.ndarray:
    import cv2

    height, width = frame.image_size
    sh, sw = seg_size
    seg = np.zeros((sh, sw), dtype=np.uint8)
    px = max(1, int(round(thickness * sw / width)))
    for lane, slot in enumerate(slots):
        if slot is None:
            continue
        xs, ys = frame.points(lane)
        pts = np.stack([xs * sw / width, ys * sh / height], axis=1)
        cv2.polylines(seg, [np.round(pts).astype(np.int32)], False, slot + 1, px)
    return seg.astype(np.int64)


ImageLoader = Callable[[LaneFrame, int], np.ndarray]


class TusimpleLaneDataset(torch.utils.data.Dataset):
    """``(image, cls_target, seg_target)`` samples for UFLD training from TuSimple frames.

    ``image_loader(frame, index)`` returns the frame as an (H, W, 3) uint8 RGB array at ``input_size``;
    the default reads ``root / frame.raw_file`` and resizes it. Images are normalized with the ImageNet
    mean and std. The segmentation target is at ``input_size / 8`` (the auxiliary head's resolution).
    """

    def __init__(
        self,
        frames: Sequence[LaneFrame],
        root: str | os.PathLike | None = None,
        input_size: tuple[int, int] = (288, 800),
        griding_num: int = 100,
        num_lanes: int = 4,
        row_anchors: Sequence[float] = TUSIMPLE_ROW_ANCHORS,
        image_loader: ImageLoader | None = None,
    ) -> None:
        if image_loader is None and root is None:
            raise ValueError("TusimpleLaneDataset needs the dataset root (for raw_file) or an image_loader")
        self.frames = list(frames)
        self.root = Path(root) if root is not None else None
        self.input_size = tuple(input_size)
        self.griding_num, self.num_lanes, self.row_anchors = griding_num, num_lanes, tuple(row_anchors)
        self.image_loader = image_loader or self._read_image

    def _read_image(self, frame: LaneFrame, index: int) -> np.ndarray:
        from PIL import Image

        with Image.open(self.root / frame.raw_file) as im:
            im = im.convert("RGB").resize(self.input_size[::-1], Image.BILINEAR)
            return np.asarray(im)

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        frame = self.frames[index]
        image = self.image_loader(frame, index)
        if image.shape != (*self.input_size, 3):
            expected = (*self.input_size, 3)
            raise ValueError(f"image of {frame.raw_file} has shape {image.shape}, expected {expected}")
        seg_size = (self.input_size[0] // 8, self.input_size[1] // 8)
        cls, seg = ufld_targets(frame, self.griding_num, self.num_lanes, self.row_anchors, seg_size)
        return normalize_image(image), torch.from_numpy(cls), torch.from_numpy(seg)


def normalize_image(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float tensor normalized with the ImageNet mean and std."""
    x = torch.from_numpy(np.array(image, dtype=np.float32)).permute(2, 0, 1) / 255.0
    mean = torch.tensor(IMAGENET_MEAN).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(3, 1, 1)
    return (x - mean) / std
