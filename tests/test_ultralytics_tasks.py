"""Segment, pose and OBB pruning runs end to end, ``track`` on a pruned checkpoint, and ``target_latency``
inside the trainer.

No segment/pose/OBB dataset exists offline, so tiny ones are generated from 8 coco128 images: segment
labels are ellipses inscribed in the boxes, pose labels 4 keypoints inside each box (``kpt_shape [4, 3]``
with a left/right ``flip_idx``), OBB labels each box turned by 15 degrees about its centre (corners clipped
to the image). The labels are made up: the runs check the pipeline, not accuracy.

CI runs one task (segment) with ``l1`` and ``greg1``; ``FXPRUNE_ALL_TASKS=1`` runs pose and OBB too
(the bench command in bench/RESULTS.md).
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("ultralytics")

from fxprune.integrations.ultralytics import (  # noqa: E402
    STATE_ATTR,
    TRAINERS,
    pruning_options,
)

from tests.test_ultralytics import COCO128, load_yolo, out_channels, param_count, train_args  # noqa: E402

ALL_TASKS = os.environ.get("FXPRUNE_ALL_TASKS") == "1"
KPT_SHAPE, FLIP_IDX = [4, 3], [1, 0, 3, 2]  # top-left, top-right, bottom-left, bottom-right
MODELS = {"segment": "yolov8n-seg.yaml", "pose": "yolov8n-pose.yaml", "obb": "yolov8n-obb.yaml"}


# -- tiny generated datasets --------------------------------------------------------------------------
def _ellipse(cx: float, cy: float, w: float, h: float, points: int = 12) -> list[float]:
    out = []
    for k in range(points):
        t = 2 * math.pi * k / points
        out += [cx + 0.5 * w * math.cos(t), cy + 0.5 * h * math.sin(t)]
    return out


def _keypoints(cx: float, cy: float, w: float, h: float) -> list[float]:
    return [
        v for dx, dy in ((-1, -1), (1, -1), (-1, 1), (1, 1)) for v in (cx + dx * w / 4, cy + dy * h / 4, 2)
    ]


def _turned_box(cx: float, cy: float, w: float, h: float, degrees: float = 15.0) -> list[float]:
    a = math.radians(degrees)
    out = []
    for dx, dy in ((-1, -1), (1, -1), (1, 1), (-1, 1)):
        x, y = dx * w / 2, dy * h / 2
        out += [cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)]
    return out


def _label_line(task: str, cls: int, box: list[float]) -> str:
    cx, cy, w, h = box
    if task == "segment":
        values = _ellipse(cx, cy, w, h)
    elif task == "pose":
        values = [cx, cy, w, h] + _keypoints(cx, cy, w, h)
    elif task == "obb":
        values = _turned_box(cx, cy, w, h)
    else:
        values = box
    clipped = [min(max(v, 0.0), 1.0) for v in values]
    return " ".join([str(cls)] + [f"{v:.6f}" for v in clipped])


def make_task_dataset(task: str, root: Path, images: int = 8) -> Path:
    """A dataset for ``task`` ("detect", "segment", "pose", "obb") from the first coco128 images; returns
    its yaml."""
    import yaml

    for sub in ("images", "labels"):
        (root / sub / "train2017").mkdir(parents=True, exist_ok=True)
    chosen = [
        p
        for p in sorted((COCO128 / "images" / "train2017").glob("*.jpg"))
        if (COCO128 / "labels" / "train2017" / f"{p.stem}.txt").exists()
    ][:images]
    for img in chosen:
        shutil.copy(img, root / "images" / "train2017")
        rows = (COCO128 / "labels" / "train2017" / f"{img.stem}.txt").read_text().split("\n")
        lines = []
        for row in filter(str.strip, rows):
            cls, *box = row.split()
            lines.append(_label_line(task, int(cls), [float(v) for v in box]))
        (root / "labels" / "train2017" / f"{img.stem}.txt").write_text("\n".join(lines) + "\n")
    data = yaml.safe_load((COCO128 / "coco128.yaml").read_text())
    data.update(path=str(root), train="images/train2017", val="images/train2017")
    data.pop("download", None)
    if task == "pose":
        data.update(kpt_shape=KPT_SHAPE, flip_idx=FLIP_IDX)
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    if not (COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"coco128 not found at {COCO128}")
    root = tmp_path_factory.mktemp("tasks")
    return {task: make_task_dataset(task, root / task) for task in ("detect", *MODELS)}


def _metric(task: str, metrics) -> float:
    """mask mAP50-95 for segment, keypoint mAP50-95 for pose, box mAP50-95 for OBB."""
    return getattr(metrics, {"segment": "seg", "pose": "pose", "obb": "box"}[task]).map


# -- segment, pose, OBB: one-shot and regularized ------------------------------------------------------
TASK_CASES = [
    pytest.param(
        task,
        method,
        marks=()
        if task == "segment" or ALL_TASKS
        else pytest.mark.skip(reason="pose and OBB run with FXPRUNE_ALL_TASKS=1 (bench command)"),
    )
    for task in MODELS
    for method in ("l1", "greg1")
]


@pytest.mark.slow
@pytest.mark.shared_data
@pytest.mark.parametrize("task, method", TASK_CASES)
def test_task_run_saves_a_slim_model_that_reloads_and_validates(
    task, method, datasets, tmp_path, single_thread
):
    data = datasets[task]
    constants = {"update_every": 1, "delta": 0.5, "stabilize": 1} if method == "greg1" else {}
    with pruning_options(method=method, ratio=0.5, method_options=constants):
        load_yolo(MODELS[task]).train(trainer=TRAINERS[task], **train_args(data.parent, tmp_path, task))
    best_path = tmp_path / task / "weights" / "best.pt"
    best = load_yolo(str(best_path))
    assert best.task == task
    if task == "pose":
        assert list(best.model.model[-1].kpt_shape) == KPT_SHAPE  # the dataset's keypoints, not the yaml's
    state = getattr(best.model, STATE_ATTR)
    assert state["phase"] == "pruned"
    summary = state["summary"]  # dense: the model the trainer built (80 classes; pose: 4 keypoints)
    assert param_count(best.model) == summary["pruned"]["params"] < 0.6 * summary["dense"]["params"]
    dense_neck = out_channels(load_yolo(MODELS[task]).model, "model.15")
    assert out_channels(best.model, "model.15") < dense_neck, "the neck was not pruned"
    if method == "greg1":
        assert summary["at"]["iteration"] > 0  # regularized before pruning
    metrics = best.val(data=str(data), imgsz=64, batch=2, plots=False, verbose=False)
    assert 0.0 <= _metric(task, metrics) <= 1.0


# -- track on a pruned checkpoint -----------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.shared_data
def test_track_runs_on_a_pruned_checkpoint(datasets, tmp_path, single_thread):
    pytest.importorskip("lap", reason="ultralytics' trackers need lap: pip install lap")
    data = datasets["detect"]
    with pruning_options(method="l1", ratio=0.5):
        load_yolo("yolov8n.yaml").train(
            trainer=TRAINERS["detect"], **train_args(data.parent, tmp_path, "track")
        )
    pruned = load_yolo(str(tmp_path / "track" / "weights" / "best.pt"))
    frames = sorted((data.parent / "images" / "train2017").glob("*.jpg"))[:4]
    results = [r for f in frames for r in pruned.track(source=str(f), imgsz=64, persist=True, verbose=False)]
    assert len(results) == len(frames)
    assert all(r.boxes is not None for r in results)


# -- target_latency inside the trainer ----------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.shared_data
def test_latency_target_inside_the_trainer_saves_a_slim_checkpoint(
    datasets, tmp_path, monkeypatch, single_thread
):
    """``target_latency`` through the trainer, with layer latencies from a FLOP formula instead of
    measurements and without the measured check (both cost minutes at CI scale; see bench/RESULTS.md)."""
    import fxprune.deploy

    from tests.latency_helpers import AnalyticTable

    planners, real = [], fxprune.deploy.LatencyPlanner

    def stand_in(target, backend="ort", **kw):
        planner = real(target, backend, table=AnalyticTable(path=tmp_path / "lut.json"), validate=False, **kw)
        planners.append(planner)
        return planner

    monkeypatch.setattr(fxprune.deploy, "LatencyPlanner", stand_in)  # what the trainer's engine builds
    data = datasets["detect"]
    with pruning_options(method="l1", target_latency="0.5x", backend="ort"):
        load_yolo("yolov8n.yaml").train(
            trainer=TRAINERS["detect"], **train_args(data.parent, tmp_path, "lat")
        )
    (planner,) = planners
    assert planner.target == "0.5x" and planner.backend == "ort"
    assert planner.result.estimated_ratio <= 0.5 + 1e-6  # the plan meets the budget on its latency model
    best = load_yolo(str(tmp_path / "lat" / "weights" / "best.pt"))
    state = getattr(best.model, STATE_ATTR)
    assert state["phase"] == "pruned" and state["options"]["target_latency"] == "0.5x"
    summary = state["summary"]
    assert param_count(best.model) == summary["pruned"]["params"] < summary["dense"]["params"]
    assert summary["latency"]["estimated_ratio"] == pytest.approx(planner.result.estimated_ratio)
    assert summary["latency"]["measured_ratio"] is None  # validate=False: not measured
    assert summary["pruned"]["flops"] < 0.6 * summary["dense"]["flops"]  # the stand-in latency is MACs
    assert out_channels(best.model, "model.15") < out_channels(load_yolo("yolov8n.yaml").model, "model.15")
