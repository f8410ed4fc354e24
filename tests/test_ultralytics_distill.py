"""Distillation from the dense model while a pruned YOLO model fine-tunes (``distill``, ``distill_feat``)."""

from __future__ import annotations

import copy
import pickle

import pytest
import torch

pytest.importorskip("ultralytics")

from tests.test_ultralytics import (  # noqa: E402  (sets up ultralytics' offline config first)
    STATE_ATTR,
    PruneDetectionTrainer,
    PruningOptions,
    load_yolo,
    pruning_options,
    tiny_coco,  # noqa: F401  (fixture)
    train_args,
    yolo_interface,
)

# isort: split
from fxprune.integrations.ultralytics.distill import (  # noqa: E402
    Distiller,
    DistillLoss,
    freeze_teacher,
)


@pytest.fixture(scope="module")
def dense_and_slim():
    import fxprune

    torch.manual_seed(0)
    dense = load_yolo("yolov8n.yaml").model
    slim = copy.deepcopy(dense)
    fxprune.prune(slim, torch.zeros(1, 3, 64, 64), 0.5, outputs=yolo_interface, importance="l1")
    return dense, slim


def _batch(n: int = 2) -> dict:
    torch.manual_seed(1)
    return {"img": torch.rand(n, 3, 64, 64)}


def test_the_terms_vanish_for_the_teacher_itself_and_not_for_a_pruned_student(dense_and_slim, single_thread):
    dense, slim = dense_and_slim
    teacher = freeze_teacher(dense)
    batch = _batch()
    same = copy.deepcopy(dense).eval()  # the teacher's own outputs: every term is 0
    loss = Distiller(teacher, 1.0, 1.0)(same(batch["img"]), batch)
    assert abs(float(loss.detach())) < 1e-4
    student = copy.deepcopy(slim).train()
    distiller = Distiller(teacher, 1.0, 1.0)
    loss = distiller(student(batch["img"]), batch)
    assert float(distiller.last["kd_cls"]) > 1e-3 and float(distiller.last["kd_box"]) > 1e-4
    assert float(distiller.last["kd_feat"]) > 0
    loss.backward()
    assert all(p.grad is None for p in teacher.parameters()), "the teacher received gradients"
    assert not any(p.requires_grad for p in teacher.parameters())
    assert student.model[0].conv.weight.grad.abs().sum() > 0
    assert not teacher.training


def test_the_wrapped_criterion_adds_the_term_and_copies_drop_the_teacher(dense_and_slim, single_thread):
    dense, slim = dense_and_slim
    from ultralytics.cfg import get_cfg

    student = copy.deepcopy(slim).train()
    student.args = get_cfg()  # the loss gains the trainer sets
    criterion = student.init_criterion()
    distiller = Distiller(freeze_teacher(dense), 2.0)
    wrapped = DistillLoss(criterion, distiller)
    n = 2
    batch = {
        "img": _batch(n)["img"],
        "batch_idx": torch.tensor([0.0, 1.0]),
        "cls": torch.tensor([[0.0], [1.0]]),
        "bboxes": torch.tensor([[0.5, 0.5, 0.2, 0.2], [0.3, 0.3, 0.2, 0.3]]),
    }
    preds = student(batch["img"])
    plain, _ = criterion(preds, batch)
    total, items = wrapped(preds, batch)
    extra = float((total - plain.sum()).detach())
    expected = 2.0 * float(distiller.last["kd_cls"] + distiller.last["kd_box"]) * n
    assert extra > 0 and extra == pytest.approx(expected, rel=1e-4)
    with torch.no_grad():  # validation losses are ultralytics' own
        assert torch.allclose(wrapped(preds, batch)[0], criterion(preds, batch)[0])
    student.criterion = wrapped
    for copied in (copy.deepcopy(student), pickle.loads(pickle.dumps(student))):
        assert type(copied.criterion) is type(criterion), "a copy of the model carries the teacher"
    with pytest.raises(ValueError, match="distill is a loss weight >= 0"):
        PruningOptions(distill=-1.0)


def test_distillation_keys_reach_the_options_from_the_command_line():
    from fxprune.cli.yolo import split_settings

    pruning, _, train, _ = split_settings(["distill=0.5", "distill_feat=50", "teacher=d.pt", "epochs=3"])
    assert pruning == {"distill": 0.5, "distill_feat": 50, "teacher": "d.pt"} and train == {"epochs": 3}
    options = PruningOptions(**pruning)
    assert options.distilling and not PruningOptions().distilling


@pytest.mark.slow
@pytest.mark.shared_data
def test_distilled_run_saves_no_teacher_and_resumes(tiny_coco, tmp_path, single_thread):  # noqa: F811
    seen = {}

    class Interrupted(RuntimeError):
        pass

    def after_batch(trainer):
        distiller = trainer.pruning.distiller
        seen["wrapped"] = isinstance(trainer.model.criterion, DistillLoss)
        seen["kd_cls"] = float(distiller.last["kd_cls"])
        seen["teacher_grads"] = [p.grad for p in distiller.teacher.parameters() if p.grad is not None]

    def crash_after_first_epoch(trainer):
        raise Interrupted

    start = tmp_path / "dense.pt"
    load_yolo("yolov8n.yaml").save(str(start))  # a checkpoint file: the teacher's stored source
    model = load_yolo(str(start))
    model.add_callback("on_train_batch_end", after_batch)
    model.add_callback("on_fit_epoch_end", crash_after_first_epoch)
    with pruning_options(method="l1", ratio=0.5, distill=1.0, distill_feat=100.0):
        with pytest.raises(Interrupted):
            model.train(trainer=PruneDetectionTrainer, **train_args(tiny_coco, tmp_path, "kd", epochs=2))
    assert seen["wrapped"] and seen["kd_cls"] > 0 and not seen["teacher_grads"]
    last = tmp_path / "kd" / "weights" / "last.pt"
    ckpt = torch.load(last, weights_only=False)
    slim = ckpt["ema"]
    assert type(slim.criterion).__name__ != "DistillLoss"
    dense_params = sum(p.numel() for p in load_yolo(str(start)).model.parameters())
    assert sum(p.numel() for p in slim.parameters()) < 0.6 * dense_params  # the slim model, no teacher
    assert not any(isinstance(v, torch.nn.Module) and v is not slim for v in ckpt.values() if v is not None)
    state = getattr(slim, STATE_ATTR)
    assert state["options"]["teacher"] == str(start.resolve()) and state["options"]["distill"] == 1.0
    seen.clear()
    resumed = load_yolo(str(last))
    resumed.add_callback("on_train_batch_end", after_batch)
    resumed.train(resume=True, trainer=PruneDetectionTrainer)
    assert seen["wrapped"] and seen["kd_cls"] > 0, "the resumed run does not distil"
