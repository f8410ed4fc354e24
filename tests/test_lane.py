"""TuSimple reader and UFLD targets, the TuSimple metric, the UFLD loss and the lane renderer."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from fxprune.models import (
    LaneFrame,
    LaneRenderer,
    TusimpleLaneDataset,
    decode_ufld,
    flip_frame,
    frame_from_instance_mask,
    frame_scores,
    lane_resnet18_narrow,
    lane_slots,
    read_tusimple_labels,
    shape_loss,
    similarity_loss,
    softmax_focal_loss,
    tusimple_scores,
    ufld_loss,
    ufld_targets,
)

H_SAMPLES = list(range(160, 720, 10))  # 56 rows, as in TuSimple
CELL = 1279 / 99  # UFLD gridding of a 1280-wide frame into 100 cells


def _lane(x_at_160: float, dx_per_row: float, first: int = 0, last: int = 55) -> list[int]:
    """x per h_sample of a straight lane present from row index ``first`` to ``last``; -2 elsewhere."""
    return [int(round(x_at_160 + dx_per_row * j)) if first <= j <= last else -2 for j in range(56)]


# left lanes go down-left (x falls as y grows: negative image slope), right lanes down-right
EGO_LEFT = _lane(600, -8, first=4)  # steep left lane -> slot 1, absent on the first 4 rows
OUTER_LEFT = _lane(560, -20, last=27)  # flatter left lane -> slot 0, leaves the image at the left
EGO_RIGHT = _lane(680, 9)  # slot 2


def _write_labels(path: Path) -> Path:
    rows = [
        {"lanes": [EGO_RIGHT, EGO_LEFT, OUTER_LEFT], "h_samples": H_SAMPLES, "raw_file": "clips/a/20.jpg"},
        {"lanes": [EGO_LEFT], "h_samples": H_SAMPLES, "raw_file": "clips/b/20.jpg"},
    ]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


@pytest.fixture
def label_file(tmp_path):
    return _write_labels(tmp_path / "label_data_test.json")


def test_reader_and_row_anchor_targets(label_file):
    frames = read_tusimple_labels(label_file.parent)  # a folder of label_data_*.json
    assert [f.raw_file for f in frames] == ["clips/a/20.jpg", "clips/b/20.jpg"]
    frame = frames[0]
    assert lane_slots(frame) == [2, 1, 0]
    cls, seg = ufld_targets(frame, griding_num=100, seg_size=(36, 100))
    assert cls.shape == (56, 4) and cls.dtype == np.int64 and seg.shape == (36, 100)
    # ego-left lane (slot 1): x = 600 - 8 j from row 4 on; at row 10 x = 520 -> cell floor(520 / 12.92) = 40
    assert cls[10, 1] == 40 and cls[55, 1] == int((600 - 8 * 55) // CELL) == 12
    assert (cls[:4, 1] == 100).all()  # absent rows: the "no lane" class
    assert cls[0, 2] == int(680 // CELL) == 52 and cls[55, 2] == int((680 + 9 * 55) // CELL) == 90
    # outer-left lane leaves the image (x < 0) after row 28 and is unlabelled from there on
    assert cls[27, 0] == int((560 - 20 * 27) // CELL) == 1 and (cls[28:, 0] == 100).all()
    assert (cls[:, 3] == 100).all()  # no second right lane in this frame
    # segmentation: slot k drawn as value k + 1 where the label passes, background elsewhere
    y, x = 460 * 36 // 720, int(round((680 + 9 * 30) * 100 / 1280))  # row index 30 is y = 460
    assert seg[y, x] == 3 and seg[y, 50] == 0
    assert set(np.unique(seg)) == {0, 1, 2, 3}
    lone = ufld_targets(frames[1], seg_size=None)[0]
    assert (lone[:, [0, 2, 3]] == 100).all() and (lone[4:, 1] < 100).all()


def test_flip_swaps_sides(label_file):
    frame = read_tusimple_labels(label_file)[0]
    flipped = flip_frame(frame)
    assert lane_slots(flipped) == [1, 2, 3]  # the right lane becomes the ego-left one, and so on
    assert flipped.lanes[0][0] == 1279 - 680 and flipped.lanes[1][0] == -2


def test_reader_errors(tmp_path):
    bad = tmp_path / "label_data_bad.json"
    bad.write_text(json.dumps({"lanes": [[1, 2]], "raw_file": "x.jpg"}) + "\n")
    with pytest.raises(ValueError, match="h_samples"):
        read_tusimple_labels(bad)
    bad.write_text(json.dumps({"lanes": [[1, 2]], "h_samples": [160, 170, 180], "raw_file": "x.jpg"}) + "\n")
    with pytest.raises(ValueError, match="one x per h_sample"):
        read_tusimple_labels(bad)
    with pytest.raises(ValueError, match="image_loader"):
        TusimpleLaneDataset([])


def _shared() -> Path | None:
    root = os.environ.get("FXPRUNE_SHARED_DATA")
    folder = Path(root) / "tusimple_sample" if root else None
    return folder if folder is not None and folder.is_dir() else None


@pytest.mark.skipif(_shared() is None, reason="../shared/data/tusimple_sample absent")
def test_shared_sample_targets():
    frames = read_tusimple_labels(_shared() / "labels")
    assert len(frames) == 768
    for frame in frames[::40]:
        cls, seg = ufld_targets(frame, seg_size=(16, 40))
        assert cls.shape == (56, 4) and seg.shape == (16, 40)
        slots = lane_slots(frame)
        assert sum(s is not None for s in slots) >= 2
        for lane, slot in enumerate(slots):
            if slot is None:
                continue
            xs = frame.lanes[lane]
            inside = (xs >= 0) & (xs <= 1279)
            assert (cls[inside, slot] == (xs[inside] // CELL)).all()
            assert (cls[xs < 0, slot] == 100).all()


@pytest.mark.skipif(_shared() is None, reason="../shared/data/tusimple_sample absent")
def test_real_frame_targets_fall_on_lane_pixels():
    from PIL import Image

    folder = _shared() / "lanenet_example"
    mask = np.array(Image.open(folder / "gt_instance_image" / "0000.png"))
    binary = np.array(Image.open(folder / "gt_binary_image" / "0000.png")) > 0
    frame = frame_from_instance_mask(mask, raw_file="image/0000.png")
    assert len(frame.lanes) == 4
    image, cls_t, seg_t = TusimpleLaneDataset([frame], root=folder, input_size=(128, 320))[0]
    assert image.shape == (3, 128, 320) and cls_t.shape == (56, 4) and seg_t.shape == (16, 40)
    assert -2.2 < float(image.min()) < 0.0 < float(image.max()) < 2.7  # ImageNet-normalized pixels
    cls, _ = ufld_targets(frame, row_anchors=frame.h_samples, seg_size=None)
    hits = [
        np.abs(np.flatnonzero(binary[y]) - (c + 0.5) * CELL).min() <= CELL / 2 + 1
        for r, y in enumerate(frame.h_samples)
        for c in cls[r]
        if c < 100
    ]
    assert len(hits) > 100 and np.mean(hits) > 0.98


# -- metric --------------------------------------------------------------------------------------------
def _gt4() -> list[list[int]]:
    return [_lane(300, 0), _lane(500, 0), _lane(800, 0), _lane(1000, 0, first=10)]


def test_metric_perfect_and_shifted():
    gt = _gt4()
    assert frame_scores(gt, gt, H_SAMPLES) == (1.0, 0.0, 0.0)
    near = [[x + 15 if x >= 0 else x for x in lane] for lane in gt]
    assert frame_scores(near, gt, H_SAMPLES) == (1.0, 0.0, 0.0)
    shifted = [list(lane) for lane in gt]
    shifted[1] = [x + 25 for x in gt[1]]  # 25 px > 20 px on a vertical lane: every point wrong
    acc, fp, fn = frame_scores(shifted, gt, H_SAMPLES)
    assert acc == pytest.approx(0.75) and fp == pytest.approx(0.25) and fn == pytest.approx(0.25)


def test_metric_angle_tolerance():
    slanted = _lane(100, 10)  # dx/dy = 1: 45 degrees, tolerance 20 / cos(45) = 28.3 px
    assert frame_scores([[x + 25 for x in slanted]], [slanted], H_SAMPLES)[0] == 1.0
    assert frame_scores([[x + 30 for x in slanted]], [slanted], H_SAMPLES)[0] == 0.0


def test_metric_fp_fn_counts():
    gt = _gt4()
    extra = _lane(650, 0)
    acc, fp, fn = frame_scores(gt + [extra], gt, H_SAMPLES)
    assert (acc, fp, fn) == (1.0, pytest.approx(0.2), 0.0)
    acc, fp, fn = frame_scores(gt[:3], gt, H_SAMPLES)
    assert fn == pytest.approx(0.25) and fp == 0.0 and acc == pytest.approx(0.75)  # absent rows need no pred
    assert frame_scores(gt + [extra] * 3, gt, H_SAMPLES) == (0.0, 0.0, 1.0)  # more than #gt + 2
    five = gt + [extra]  # more than 4 lanes: the worst lane and one miss are forgiven
    acc, fp, fn = frame_scores(gt, five, H_SAMPLES)
    assert acc == 1.0 and fn == 0.0
    scores = tusimple_scores([gt, gt[:3]], [gt, gt], [H_SAMPLES, H_SAMPLES])
    assert scores.accuracy == pytest.approx((1.0 + 0.75) / 2) and scores.fn == pytest.approx(0.125)


def test_decode_inverts_targets(label_file):
    frame = read_tusimple_labels(label_file)[0]
    cls, _ = ufld_targets(frame, seg_size=None)
    logits = torch.full((101, 56, 4), -20.0)
    logits.scatter_(0, torch.from_numpy(cls)[None], 20.0)
    lanes = decode_ufld(logits, griding_num=100)
    assert len(lanes) == 3  # the empty slot gives no lane
    gt = [lane.tolist() for lane in frame.lanes]
    acc, fp, fn = frame_scores(lanes, gt, frame.h_samples)
    assert acc > 0.99 and fp == 0.0 and fn == 0.0


# -- loss ----------------------------------------------------------------------------------------------
def test_loss_terms():
    labels = torch.randint(0, 11, (2, 8, 4))
    logits = torch.randn(2, 11, 8, 4)
    ce = torch.nn.functional.cross_entropy(logits, labels)
    assert softmax_focal_loss(logits, labels, gamma=0.0) == pytest.approx(float(ce), rel=1e-5)
    assert softmax_focal_loss(logits, labels) < ce
    flat = logits[:, :, :1].expand(-1, -1, 8, -1)
    assert float(similarity_loss(flat)) == 0.0 and float(similarity_loss(logits)) > 0.0
    straight = torch.full((1, 11, 8, 1), -30.0)
    straight[0, torch.arange(8), torch.arange(8)] = 30.0  # one cell further right per row
    assert float(shape_loss(straight)) == pytest.approx(0.0, abs=1e-5)
    bent = straight.clone()
    bent[0, :, 2] = -30.0
    bent[0, 7, 2] = 30.0
    assert float(shape_loss(bent)) > 1.0


def test_loss_decreases_on_rendered_batch(single_thread):
    torch.manual_seed(0)
    size = (64, 160)
    frames = [LaneFrame("x", np.array(H_SAMPLES), [np.array(lane) for lane in (EGO_LEFT, EGO_RIGHT)])]
    frames.append(flip_frame(frames[0]))
    ds = TusimpleLaneDataset(frames * 2, input_size=size, griding_num=25, image_loader=LaneRenderer(size))
    x, cls, seg = (torch.stack(t) for t in zip(*(ds[i] for i in range(len(ds)))))
    assert x.shape == (4, 3, 64, 160) and cls.shape == (4, 56, 4) and seg.shape == (4, 8, 20)
    model = lane_resnet18_narrow(width=4, griding_num=25, input_size=size, hidden=32)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(12):
        loss, parts = _step(model, x, cls, seg)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert set(parts) == {"cls", "sim", "seg"}
    assert losses[-1] < 0.7 * losses[0]


def _step(model, x, cls, seg):
    cls_out, seg_out = model(x)
    return ufld_loss(cls_out, cls, seg_out, seg)


# -- renderer ------------------------------------------------------------------------------------------
def test_renderer_draws_along_the_label():
    size = (128, 320)
    lane = np.array(_lane(600, -8, first=4))
    frame = LaneFrame("x", np.array(H_SAMPLES), [lane])
    empty = LaneFrame("x", np.array(H_SAMPLES), [])
    renderer = LaneRenderer(size, seed=3)
    with_lane = renderer(frame, 7).astype(np.int32)
    road = renderer(empty, 7).astype(np.int32)
    assert with_lane.shape == (*size, 3) and with_lane.dtype == np.int32
    changed = np.abs(with_lane - road).sum(-1) > 60
    ys, xs = np.nonzero(changed)
    assert len(ys) > 50
    # every changed pixel lies near the labelled polyline...
    line_x = np.interp(ys * 720 / 128, H_SAMPLES, np.where(lane >= 0, lane, 600 - 8 * np.arange(56)))
    assert np.abs(xs - line_x * 320 / 1280).max() < 8
    # ...and the marking covers the labelled rows (dashes leave gaps: at least 40 % of the points)
    near = [
        changed[int(y * 128 / 720), max(0, int(x * 320 / 1280) - 2) : int(x * 320 / 1280) + 3].any()
        for x, y in zip(lane, H_SAMPLES)
        if x >= 0
    ]
    assert np.mean(near) >= 0.4
    assert not changed[: int(190 * 128 / 720)].any()  # nothing above the lane's first labelled row


def test_narrow_model_at_width_64_has_the_ufld_layout():
    from fxprune.models import lane_resnet18

    small = dict(griding_num=10, row_anchors=4, lanes=4, input_size=(64, 64), use_aux=True)
    ref = {k: v.shape for k, v in lane_resnet18(**small).state_dict().items()}
    narrow = {
        k: v.shape for k, v in lane_resnet18_narrow(width=64, hidden=2048, **small).state_dict().items()
    }
    assert narrow == ref
    slim = lane_resnet18_narrow(width=8, hidden=32, **small)
    assert slim.model.layer4[1].conv2.out_channels == 64 and slim.aux_combine[-1].out_channels == 5
    cls_out, seg_out = slim(torch.randn(2, 3, 64, 64))
    assert cls_out.shape == (2, 11, 4, 4) and seg_out.shape == (2, 5, 8, 8)
