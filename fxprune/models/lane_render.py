"""Synthetic road frames drawn from TuSimple lane labels, and overlays for checking labels on real frames.

:class:`LaneRenderer` draws every labelled lane of a frame (white or yellow, solid or dashed, wider
towards the bottom as under perspective) along the labelled polyline on a random road texture (sky
gradient above the horizon, noisy asphalt with shadows below). It stands in for the clip images when
only the label files are at hand: a model trained on these images learns the real lane geometry, not
real appearance. Use it as the ``image_loader`` of :class:`~fxprune.models.tusimple.TusimpleLaneDataset`.
"""

from __future__ import annotations

import numpy as np

from fxprune.models.tusimple import LaneFrame

__all__ = ["LaneRenderer", "frame_from_instance_mask", "overlay_lanes"]

WHITE = (235, 235, 230)
YELLOW = (230, 190, 40)


def _cv2():
    try:
        import cv2
    except ImportError as err:  # pragma: no cover - opencv comes with ultralytics
        raise ImportError("lane rendering needs OpenCV: pip install opencv-python-headless") from err
    return cv2


def _smooth_noise(rng: np.random.Generator, size: tuple[int, int], cells: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] at ``size`` (bicubic upsampling of a coarse random grid)."""
    cv2 = _cv2()
    h, w = size
    coarse = rng.uniform(-1.0, 1.0, (max(2, cells * h // w), cells)).astype(np.float32)
    return cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)


class LaneRenderer:
    """Callable ``(frame, index) -> (H, W, 3) uint8`` drawing the frame's lanes on a synthetic road.

    The picture depends on ``(seed, epoch, index)`` only: set ``epoch`` to draw new textures and marking
    styles for the same geometry (augmentation); keep it fixed for a repeatable test set. Road, markings
    and sensor noise draw from separate streams, so the same frame without lanes gives the same road.
    """

    def __init__(self, input_size: tuple[int, int], seed: int = 0, epoch: int = 0) -> None:
        self.input_size = tuple(input_size)
        self.seed, self.epoch = seed, epoch

    def __call__(self, frame: LaneFrame, index: int) -> np.ndarray:
        key = [self.seed, self.epoch, index]
        image = self.road(frame, np.random.default_rng(key))
        self.draw_markings(image, frame, np.random.default_rng(key + [1]))
        rng = np.random.default_rng(key + [2])
        noise = rng.normal(0.0, rng.uniform(2.0, 8.0), image.shape)
        return np.clip(image.astype(np.float32) + noise, 0, 255).astype(np.uint8)

    def road(self, frame: LaneFrame, rng: np.random.Generator) -> np.ndarray:
        """Sky above the horizon (just above the first labelled row), textured asphalt below."""
        h, w = self.input_size
        horizon = int(round(rng.uniform(0.6, 0.95) * frame.h_samples.min() * h / frame.image_size[0]))
        image = np.empty((h, w, 3), np.float32)
        sky_top, sky_bottom = rng.uniform(120, 230, 3), rng.uniform(150, 250, 3)
        t = np.linspace(0.0, 1.0, max(horizon, 1))[:, None, None]
        image[:horizon] = (sky_top * (1 - t) + sky_bottom * t)[: max(horizon, 0)]
        base = rng.uniform(50, 140)
        tint = rng.uniform(-8, 8, 3)
        rows = h - horizon
        shade = np.linspace(rng.uniform(-20, 10), rng.uniform(-10, 20), rows)[:, None]
        texture = 18 * _smooth_noise(rng, (rows, w), 12) + 40 * _smooth_noise(rng, (rows, w), 3)
        road = base + shade + texture
        for _ in range(rng.integers(0, 4)):  # shadows
            cx, cy = rng.uniform(0, w), rng.uniform(0, rows)
            rx, ry = rng.uniform(0.05, 0.3) * w, rng.uniform(0.05, 0.3) * rows
            yy, xx = np.ogrid[:rows, :w]
            road = np.where(
                ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 < 1, road * rng.uniform(0.4, 0.8), road
            )
        image[horizon:] = road[:, :, None] + tint
        return np.clip(image, 0, 255).astype(np.uint8)

    def draw_markings(self, image: np.ndarray, frame: LaneFrame, rng: np.random.Generator) -> None:
        """Draw every labelled lane of ``frame`` into ``image`` along its polyline, in place."""
        cv2 = _cv2()
        h, w = self.input_size
        sy, sx = h / frame.image_size[0], w / frame.image_size[1]
        for lane in range(len(frame.lanes)):
            xs, ys = frame.points(lane)
            if len(xs) < 2:
                continue
            color = np.array(YELLOW if rng.random() < 0.25 else WHITE, np.float64) * rng.uniform(0.7, 1.05)
            dashed, phase = rng.random() < 0.5, int(rng.integers(0, 4))
            width_top, width_bottom = rng.uniform(2, 6), rng.uniform(14, 26)  # original pixels
            for j in range(len(xs) - 1):
                if dashed and (j + phase) % 4 >= 2:
                    continue
                frac = (ys[j] - 160.0) / max(frame.image_size[0] - 160.0, 1.0)
                thick = max(1, int(round((width_top + (width_bottom - width_top) * frac) * sx)))
                p0 = (int(round(xs[j] * sx)), int(round(ys[j] * sy)))
                p1 = (int(round(xs[j + 1] * sx)), int(round(ys[j + 1] * sy)))
                cv2.line(image, p0, p1, tuple(float(c) for c in np.clip(color, 0, 255)), thick, cv2.LINE_AA)


def overlay_lanes(image: np.ndarray, frame: LaneFrame, radius: int = 4) -> np.ndarray:
    """A copy of ``image`` with the labelled points of ``frame`` drawn on it (one colour per lane)."""
    cv2 = _cv2()
    out = np.ascontiguousarray(image.copy())
    sy, sx = image.shape[0] / frame.image_size[0], image.shape[1] / frame.image_size[1]
    colors = [(255, 0, 0), (0, 255, 0), (0, 128, 255), (255, 0, 255), (255, 255, 0), (0, 255, 255)]
    for lane in range(len(frame.lanes)):
        xs, ys = frame.points(lane)
        for x, y in zip(xs, ys):
            cv2.circle(out, (int(round(x * sx)), int(round(y * sy))), radius, colors[lane % len(colors)], -1)
    return out


def frame_from_instance_mask(
    mask: np.ndarray, h_samples: np.ndarray | None = None, raw_file: str = "", min_pixels: int = 50
) -> LaneFrame:
    """A TuSimple label from an instance mask (0 background, one value per lane): mean x per h_sample.

    For frames that come with lane masks instead of a label line (e.g. the LaneNet examples).
    """
    if h_samples is None:
        h_samples = np.arange(160, mask.shape[0], 10)
    h_samples = np.asarray(h_samples, dtype=np.int64)
    lanes = []
    for value in np.unique(mask):
        if value == 0 or int((mask == value).sum()) < min_pixels:
            continue
        xs = np.full(len(h_samples), -2, dtype=np.int64)
        for j, y in enumerate(h_samples):
            cols = np.flatnonzero(mask[y] == value)
            if len(cols):
                xs[j] = int(round(cols.mean()))
        lanes.append(xs)
    return LaneFrame(raw_file, h_samples, lanes, (int(mask.shape[0]), int(mask.shape[1])))
