"""Pruning inside ultralytics' training pipeline (fxprune.integrations.ultralytics) and `fxprune yolo`."""

from __future__ import annotations

import os
import shutil
import types
from pathlib import Path

import pytest
import torch
from torch import nn

pytest.importorskip("ultralytics")

COCO128 = Path(os.environ.get("FXPRUNE_SHARED_DATA", "")) / "coco128"


def _font_dir(tmp: Path) -> None:
    """ultralytics downloads a font for plots; offline it needs one in its config folder."""
    if os.environ.get("YOLO_CONFIG_DIR"):
        return
    import matplotlib

    font = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
    tmp.mkdir(parents=True, exist_ok=True)
    for name in ("Arial.ttf", "Arial.Unicode.ttf"):
        shutil.copy(font, tmp / name)
    os.environ["YOLO_CONFIG_DIR"] = str(tmp)


_font_dir(Path(os.environ.get("TMPDIR", "/tmp")) / "fxprune-yolo-config")

from fxprune.integrations.ultralytics import (  # noqa: E402
    STATE_ATTR,
    PruneDetectionTrainer,
    PruningEngine,
    PruningOptions,
    PruningTrainerMixin,
    deployment_form,
    pruning_options,
    yolo_interface,
)


def load_yolo(spec: str):
    from ultralytics import YOLO

    return YOLO(spec)


def param_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# -- the neck: only the decoded predictions are the interface ------------------------------------------
@pytest.mark.parametrize(
    "spec",
    [
        "yolov8n.yaml",
        "yolo11n.yaml",
        "yolov5nu.yaml",
        "yolov3-tiny.yaml",
        "yolov8n-seg.yaml",
        "yolo11n-pose.yaml",
    ],
)
def test_neck_is_pruned_with_the_yolo_interface(spec, single_thread):
    import fxprune

    model = load_yolo(spec).model
    x = torch.zeros(1, 3, 64, 64)
    head = model.model[-1]
    necks = [f"model.{i}" for i in head.f]
    frozen_by_output = lambda a: {  # noqa: E731
        g.modules[0] for g in a.groups if "model output" in g.frozen.values() and g.modules
    }
    if spec == "yolov8n.yaml":  # without the selector, the neck outputs are frozen (one model: saves time)
        default = fxprune.analyze(model, x)
        assert any(m.startswith(tuple(necks)) for m in frozen_by_output(default))
    dense_widths = {n: out_channels(model, n) for n in necks}
    report = fxprune.prune(model, x, 0.5, outputs=yolo_interface, importance="l1")
    assert report.exact_error is not None and report.exact_error < 1e-4
    assert any(out_channels(model, n) < dense_widths[n] for n in necks), "no neck output was pruned"


def out_channels(model: nn.Module, name: str) -> int:
    """Channels of the output of layer ``name`` (measured with a forward hook)."""
    seen = []
    handle = model.get_submodule(name).register_forward_hook(lambda m, i, o: seen.append(o.shape[1]))
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 64, 64))
    finally:
        handle.remove()
    return seen[0]


def test_deployment_form_returns_the_decoded_predictions_only_and_leaves_the_model_alone():
    model = load_yolo("yolov8n.yaml").model.eval()
    x = torch.rand(1, 3, 64, 64)
    deployed = deployment_form(model)
    with torch.no_grad():
        eval_out, export_out = model(x), deployed(x)
    assert isinstance(eval_out, tuple) and torch.is_tensor(export_out)  # eval mode also returns raw maps
    torch.testing.assert_close(export_out, eval_out[0])
    assert not any(getattr(m, "export", False) for m in model.modules())


# -- options -----------------------------------------------------------------------------------------
def test_options_travel_in_the_environment_and_refuse_bad_values():
    with pruning_options(method="greg1", target_flops=0.5, method_options={"delta": 0.01}) as opts:
        assert PruningOptions.from_env() == opts
    assert PruningOptions.from_env() is None
    with pytest.raises(ValueError, match="unknown pruning method 'nope'; known: .*greg1"):
        PruningOptions(method="nope")
    with pytest.raises(TypeError, match="has no option 'delta'"):
        PruningOptions(method="l1", method_options={"delta": 1})
    with pytest.raises(ValueError, match="give one of"):
        PruningOptions(ratio=0.3, target_flops=0.5)


def test_round_to_defaults_to_the_backends_alignment_and_travels_resolved(monkeypatch):
    from fxprune.deploy import alignment

    monkeypatch.setattr(alignment, "cpu_vector_width", lambda: 16)  # an AVX-512 CPU
    opts = PruningOptions(method="l1", target_flops=0.5)
    assert opts.round_to == 16 and "default for ort" in opts.alignment and "round_to=1" in opts.alignment
    assert PruningOptions(method="l1", backend="openvino").round_to == 16
    monkeypatch.setattr(alignment, "cpu_vector_width", lambda: 8)  # AVX2
    assert PruningOptions(method="l1").round_to == 8
    with pruning_options(opts):  # workers and checkpoints get the value, not "the default here"
        assert PruningOptions.from_env().round_to == 16
    assert PruningOptions(method="l1", round_to=1).alignment == "round_to=1"
    default = PruningOptions(method="l1")  # ranked across groups, 32 channels kept at least
    assert default.global_ranking is True and default.min_width == 32
    assert PruningOptions(ratios={"model.9*": 0.3}).global_ranking is False  # per-module ratios: per group
    with pytest.raises(ValueError, match="global_ranking=True does not follow"):
        PruningOptions(ratios={"model.9*": 0.3}, global_ranking=True)
    with pytest.raises(ValueError, match="round_to must be a positive int"):
        PruningOptions(round_to=2.5)


# -- the optimizer step: gradient terms once, after unscale_, before clipping ---------------------------
def test_gradient_term_is_applied_once_after_unscale_under_amp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1))
    x = torch.randn(2, 3, 8, 8)
    engine = PruningEngine(
        PruningOptions(method="bn_scale", ratio=0.5, method_options={"sparsity": 0.5, "iterations": 5})
    )
    from fxprune import Pruner

    engine.pruner = Pruner(model, x, "bn_scale", 0.5, sparsity=0.5, iterations=5)
    gamma = model[1].weight
    model(x).square().mean().backward()
    plain_grad = gamma.grad.clone()
    model.zero_grad()
    before = gamma.detach().clone()
    scaler = torch.amp.GradScaler("cpu", init_scale=1024.0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    scaler.scale(model(x).square().mean()).backward()
    trainer = types.SimpleNamespace(scaler=scaler, optimizer=optimizer, model=model, ema=None, pruning=engine)
    PruningTrainerMixin.optimizer_step(trainer)
    expected = before - (plain_grad + 0.5 * torch.sign(before))
    assert torch.allclose(gamma.detach(), expected, atol=1e-5)
    assert engine.pruner.iteration == 1


def test_slimming_rebuilds_ddp_wrapper_optimizer_schedule_and_ema(tmp_path):
    """The rebuild after slimming, on a one-process gloo group (ultralytics runs DDP only on GPUs)."""
    import torch.distributed as dist
    from ultralytics.engine.trainer import BaseTrainer
    from ultralytics.utils.torch_utils import ModelEMA

    from fxprune import Pruner

    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'group'}", rank=0, world_size=1)
    try:
        net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU(), nn.Conv2d(16, 4, 1))
        x = torch.randn(1, 3, 16, 16)
        args = dict(optimizer="SGD", lr0=0.01, momentum=0.9, weight_decay=5e-4, cos_lr=False, lrf=0.01)
        trainer = types.SimpleNamespace(
            args=types.SimpleNamespace(imgsz=16, channels_last=None, compile=False, **args),
            device=torch.device("cpu"),
            epochs=3,
            epoch=1,
            model=nn.parallel.DistributedDataParallel(net),
            stopper=None,
        )
        trainer.build_optimizer = types.MethodType(BaseTrainer.build_optimizer, trainer)
        trainer._setup_scheduler = types.MethodType(BaseTrainer._setup_scheduler, trainer)
        trainer.optimizer = trainer.build_optimizer(trainer.model, "SGD", 0.01, 0.9, 5e-4)
        trainer._setup_scheduler()
        trainer.scheduler.last_epoch = 1
        for group in trainer.optimizer.param_groups:
            group["lr"] = 0.0037  # mid-warmup value: must survive the rebuild
        trainer.ema = ModelEMA(trainer.model)
        engine = PruningEngine(PruningOptions(method="l1", ratio=0.5))
        engine.pruner = Pruner(net, x, "l1", 0.5)
        engine.slim(trainer)
        assert isinstance(trainer.model, nn.parallel.DistributedDataParallel) and trainer.model.module is net
        assert net[0].out_channels == 8
        in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        assert in_optimizer == {id(p) for p in net.parameters()}
        assert all(g["lr"] == 0.0037 for g in trainer.optimizer.param_groups)
        assert trainer.scheduler.last_epoch == 1
        assert trainer.ema.ema[0].weight.shape == net[0].weight.shape
        assert engine.phase == "pruned" and not engine.active
    finally:
        dist.destroy_process_group()


# -- end to end on a few coco128 images -----------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_coco(tmp_path_factory):
    if not (COCO128 / "images" / "train2017").is_dir():
        pytest.skip(f"coco128 not found at {COCO128}")
    import yaml

    root = tmp_path_factory.mktemp("coco8")
    for sub in ("images", "labels"):
        (root / sub / "train2017").mkdir(parents=True)
    for img in sorted((COCO128 / "images" / "train2017").glob("*.jpg"))[:8]:
        shutil.copy(img, root / "images" / "train2017")
        label = COCO128 / "labels" / "train2017" / f"{img.stem}.txt"
        if label.exists():
            shutil.copy(label, root / "labels" / "train2017")
    data = yaml.safe_load((COCO128 / "coco128.yaml").read_text())
    data["path"] = str(root)
    (root / "data.yaml").write_text(yaml.safe_dump(data))
    return root


def train_args(data: Path, project: Path, name: str, **kw) -> dict:
    args = dict(data=str(data / "data.yaml"), epochs=1, imgsz=64, batch=2, nbs=2, workers=0, plots=False)
    return {
        **args,
        "amp": False,
        "project": str(project),
        "name": name,
        "exist_ok": True,
        "verbose": False,
        **kw,
    }


@pytest.mark.slow
@pytest.mark.shared_data
def test_one_shot_run_saves_a_slim_model_that_reloads_validates_and_exports(
    tiny_coco, tmp_path, single_thread
):
    dense = load_yolo("yolov8n.yaml")
    dense_params, dense_neck = param_count(dense.model), out_channels(dense.model, "model.15")
    with pruning_options(method="l1", ratio=0.5):
        dense.train(trainer=PruneDetectionTrainer, **train_args(tiny_coco, tmp_path, "l1"))
    best = load_yolo(str(tmp_path / "l1" / "weights" / "best.pt"))
    assert param_count(best.model) < 0.5 * dense_params
    assert out_channels(best.model, "model.15") < dense_neck
    assert getattr(best.model, STATE_ATTR)["phase"] == "pruned"
    metrics = best.val(data=str(tiny_coco / "data.yaml"), imgsz=64, batch=2, plots=False, verbose=False)
    assert 0.0 <= metrics.box.map <= 1.0
    onnxruntime = pytest.importorskip("onnxruntime")
    path = best.export(format="onnx", imgsz=64, verbose=False)
    x = torch.rand(1, 3, 64, 64)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    reference = load_yolo(str(tmp_path / "l1" / "weights" / "best.pt")).model.float().eval()
    with torch.no_grad():
        want = reference(x)[0]
    assert got.shape == want.shape
    assert (got - want).abs().max() <= 1e-3 * want.abs().max()


@pytest.mark.slow
@pytest.mark.shared_data
def test_regularized_run_prunes_mid_training_and_rebuilds_optimizer_and_ema(
    tiny_coco, tmp_path, single_thread
):
    seen = {}

    def on_train_end(trainer):
        model = trainer.model
        in_optimizer = {id(p) for g in trainer.optimizer.param_groups for p in g["params"]}
        seen["optimizer_matches"] = in_optimizer == {id(p) for p in model.parameters()}
        seen["ema_matches"] = all(
            a.shape == b.shape
            for a, b in zip(trainer.ema.ema.state_dict().values(), model.state_dict().values())
        )
        seen["summary"] = trainer.pruning.summary

    model = load_yolo("yolov8n.yaml")
    model.add_callback("on_train_end", on_train_end)
    constants = {"update_every": 1, "delta": 0.5, "stabilize": 1}
    with pruning_options(method="greg1", target_flops=0.5, method_options=constants):
        model.train(trainer=PruneDetectionTrainer, **train_args(tiny_coco, tmp_path, "greg1"))
    assert seen["optimizer_matches"], "the optimizer does not hold the slim model's parameters"
    assert seen["ema_matches"], "the EMA copy does not have the slim model's shapes"
    summary = seen["summary"]
    assert summary["at"]["iteration"] > 0  # regularized before pruning
    # the plan meets the target by the analysis's cost table, which leaves out a few elementwise ops
    # that count_flops includes (0.01 % of YOLOv8n at 64 px)
    assert summary["pruned"]["flops"] <= 0.5005 * summary["dense"]["flops"]


@pytest.mark.slow
@pytest.mark.shared_data
def test_resume_continues_the_schedule_where_it_stopped(tiny_coco, tmp_path, single_thread):
    class Interrupted(RuntimeError):
        pass

    def crash_after_first_epoch(trainer):
        raise Interrupted

    model = load_yolo("yolov8n.yaml")
    model.add_callback("on_fit_epoch_end", crash_after_first_epoch)
    with pruning_options(method="taylor", ratio=0.3, method_options={"iterations": 6}):
        with pytest.raises(Interrupted):
            model.train(trainer=PruneDetectionTrainer, **train_args(tiny_coco, tmp_path, "resume", epochs=3))
    last = tmp_path / "resume" / "weights" / "last.pt"
    state = getattr(load_yolo(str(last)).model, STATE_ATTR)
    assert state["phase"] == "regularizing" and state["pruner"]["state"]["t"] == 4  # 4 steps in epoch 0
    resumed = load_yolo(str(last))
    resumed.train(resume=True, trainer=PruneDetectionTrainer)  # no options: they come from the checkpoint
    final = getattr(load_yolo(str(tmp_path / "resume" / "weights" / "best.pt")).model, STATE_ATTR)
    assert final["phase"] == "pruned"
    assert final["summary"]["at"] == {"epoch": 1, "iteration": 6}  # continued from 4, not restarted at 0


@pytest.mark.slow
@pytest.mark.shared_data
def test_callbacks_only_mode_prunes_with_a_plain_trainer(tiny_coco, tmp_path, single_thread):
    from fxprune.integrations.ultralytics import add_pruning
    from ultralytics.models.yolo.detect import DetectionTrainer

    model = load_yolo("yolov8n.yaml")
    dense_params = param_count(model.model)
    constants = {"update_every": 1, "delta": 0.5, "stabilize": 1}
    engine = add_pruning(model, method="greg1", ratio=0.5, method_options=constants)
    model.train(trainer=DetectionTrainer, **train_args(tiny_coco, tmp_path, "callbacks"))
    assert engine.phase == "pruned" and engine.summary["at"]["iteration"] > 0
    best = load_yolo(str(tmp_path / "callbacks" / "weights" / "best.pt"))
    assert param_count(best.model) < 0.5 * dense_params


# -- the command line: one clear message and exit status 2 ----------------------------------------------
@pytest.mark.parametrize(
    "argv, message",
    [
        (["yolov8n.yaml", "epochz=3"], r"unknown key 'epochz' \(did you mean epochs\?\).*ratio"),
        (["yolov8n.yaml", "method=greg1", "deltta=1"], "greg1 constants ceiling, delta"),
        (["yolov8n.yaml", "data=x.yaml", "method=nope"], "unknown pruning method 'nope'; known: .*l1"),
        (["model.onnx", "data=x.yaml"], "MODEL must be an ultralytics .pt checkpoint or model .yaml"),
        (["STATE_DICT", "data=x.yaml"], "is not an ultralytics model"),
        (["yolov8n.yaml", "data=/nonexistent/data.yaml"], "dataset /nonexistent/data.yaml does not load"),
        (["yolov8n.yaml", "method=l1"], "data=... is required"),
    ],
)
def test_cli_errors_are_one_message_and_exit_2(argv, message, tmp_path, capsys):
    from fxprune.cli import main

    state_dict = tmp_path / "weights.pt"
    torch.save({"conv.weight": torch.zeros(2, 2)}, state_dict)
    argv = [str(state_dict) if a == "STATE_DICT" else a for a in argv]
    assert main(["yolo", *argv]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert len(__import__("re").findall(message, " ".join(err.split()))) == 1, err
