"""The pruning run inside an ultralytics trainer: analyse, regularize, slim in place, rebuild, fine-tune.

:class:`PruningEngine` is driven by the pruning trainers (``trainer.py``) and by the callbacks-only mode
(``callbacks.py``). Loss scale: ultralytics sums the loss over the images of a batch and over the batches
of an optimizer step, so a method's loss term is added once per image and its gradient terms are applied
with the number of images of the step as their scale (``Pruner.after_backward`` treats it like an AMP
scale): the method's constants keep their meaning relative to the per-image loss.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from torch import nn

from fxprune import Pruner
from fxprune.measure import count_flops, count_params
from fxprune.regularize import Method

from .distill import Distiller, DistillLoss, freeze_teacher, load_teacher
from .interface import example_input, sync_width_attributes, yolo_interface
from .options import PruningOptions

__all__ = ["STATE_ATTR", "PenaltyLoss", "PruningEngine", "make_pruner", "rebuild_after_slimming"]

log = logging.getLogger("fxprune.integrations.ultralytics")

STATE_ATTR = "fxprune"  # attribute of the checkpointed model holding the pruning state (plain data only)
HYPER_KEYS = ("lr", "initial_lr", "momentum", "weight_decay", "betas")


class PenaltyLoss:
    """Wraps a model's criterion: adds the method's loss term per image, counts the images of each step."""

    def __init__(self, criterion: Any, pruner: Pruner) -> None:
        self.criterion, self.pruner, self.images = criterion, pruner, 0

    def __call__(self, preds: Any, batch: dict) -> tuple[torch.Tensor, Any]:
        loss, items = self.criterion(preds, batch)
        if torch.is_grad_enabled():
            n = int(batch["img"].shape[0])
            self.images += n
            loss = loss.sum() + self.pruner.penalty() * n
        return loss, items

    def take_images(self) -> int:
        """The images seen since the last call (at least 1)."""
        n, self.images = self.images, 0
        return max(n, 1)

    def __getattr__(self, name: str) -> Any:  # criterion.update() and friends
        if name in ("criterion", "pruner", "images"):
            raise AttributeError(name)
        return getattr(self.criterion, name)


class StepScale:
    """The factor the gradients of one optimizer step carry, in the form ``Pruner.after_backward`` reads."""

    def __init__(self, factor: float) -> None:
        self.factor = float(factor)

    def is_enabled(self) -> bool:
        return True

    def get_scale(self) -> float:
        return self.factor


def make_pruner(model: nn.Module, example: torch.Tensor, options: PruningOptions) -> Pruner:
    """A :class:`fxprune.Pruner` for an ultralytics model (decoded predictions as its interface)."""
    kw: dict[str, Any] = dict(
        ratios=dict(options.ratios),
        scope=options.scope,
        ignore=list(options.ignore),
        round_to=options.round_to,
        min_width=options.min_width,
        global_ranking=options.global_ranking,
        outputs=yolo_interface,
        **options.method_options,
    )
    if options.target_flops is not None:
        kw.update(target_flops=options.target_flops, cost_weight=options.cost_weight)
    planner = _planner(options)
    if planner is not None:
        kw["planner"] = planner
    ratio = 0.5 if options.ratio is None else options.ratio
    return Pruner(model, example, options.method, ratio, **kw)


def _planner(options: PruningOptions) -> Any:
    """The planner for ``target_params`` or ``target_latency`` (None for ratio and FLOPs targets)."""
    import inspect

    if options.target_params is None and options.target_latency is None:
        return None
    if "planner" not in inspect.signature(Pruner).parameters:
        raise ValueError(
            "target_params and target_latency need fxprune.Pruner(planner=...), not in this version"
        )
    settings = dict(round_to=options.round_to, min_width=options.min_width)
    if options.target_params is not None:
        from fxprune.targets import SizeTargetPlanner

        return SizeTargetPlanner(
            options.target_params,
            "params",
            ratios=dict(options.ratios),
            global_ranking=options.global_ranking,
            cost_weight=options.cost_weight,
            **settings,
        )
    from fxprune.deploy import LatencyPlanner

    return LatencyPlanner(options.target_latency, backend=options.backend, **settings)


def _latency_summary(planner: Any) -> dict[str, Any] | None:
    """What a latency planner found (target, estimated and measured latency ratios, dense ms, rounds), as
    plain data for the checkpoint; None for other planners."""
    result = getattr(planner, "result", None)
    if result is None or not hasattr(result, "estimated_ratio"):
        return None
    return {
        "backend": result.backend,
        "target_ratio": float(result.target_ratio),
        "estimated_ratio": float(result.estimated_ratio),
        "measured_ratio": None if result.measured_ratio is None else float(result.measured_ratio),
        "dense_ms": None if result.dense_ms is None else float(result.dense_ms),
        "rounds": [{k: None if v is None else float(v) for k, v in r.items()} for r in result.rounds],
    }


def _criterion(model: nn.Module) -> Any:
    """The model's loss, built first where ultralytics has not yet (it builds it on the first loss call)."""
    if getattr(model, "criterion", None) is None:
        model.criterion = model.init_criterion()
    return model.criterion


def _unwrap(model: nn.Module) -> nn.Module:
    from ultralytics.utils.torch_utils import unwrap_model

    return unwrap_model(model)


def calibration_batches(trainer: Any, images: int = 64) -> list[torch.Tensor]:
    """The first training batches (preprocessed images, about ``images`` of them) for calibration."""
    out, seen = [], 0
    for batch in trainer.train_loader:
        img = trainer.preprocess_batch(batch)["img"]
        out.append(img)
        seen += int(img.shape[0])
        if seen >= images:
            break
    return out


def rebuild_after_slimming(trainer: Any) -> None:
    """Rebuild what holds the old parameters: DDP wrapper, optimizer (same hyper-parameters, fresh
    momentum), learning-rate schedule (same position), EMA (restarted from the slim weights)."""
    from ultralytics.utils.torch_utils import ModelEMA

    model = _unwrap(trainer.model)
    for name, p in model.named_parameters():
        frozen = any(f in name for f in getattr(trainer, "freeze_layer_names", [".dfl"]))
        p.requires_grad = p.dtype.is_floating_point and not frozen
    if trainer.device.type == "cuda" and trainer.args.channels_last is not False:
        model.to(memory_format=torch.channels_last)
    trainer.model = (
        _wrap_ddp(trainer, model) if isinstance(trainer.model, nn.parallel.DistributedDataParallel) else model
    )
    old, epoch = trainer.optimizer, trainer.scheduler.last_epoch
    trainer.optimizer = trainer.build_optimizer(
        model=trainer.model,
        name=trainer.args.optimizer,
        lr=trainer.args.lr0,
        momentum=trainer.args.momentum,
        decay=trainer.args.weight_decay,
    )
    trainer._setup_scheduler()
    trainer.scheduler.last_epoch = epoch
    for new_group, old_group in zip(trainer.optimizer.param_groups, old.param_groups):
        new_group.update({k: old_group[k] for k in HYPER_KEYS if k in old_group and k in new_group})
    trainer.ema = ModelEMA(trainer.model)
    trainer.best_fitness = None  # best.pt is chosen among slim epochs only
    if getattr(trainer, "stopper", None) is not None:
        trainer.stopper.best_fitness, trainer.stopper.best_epoch = 0.0, getattr(trainer, "epoch", 0)


def _wrap_ddp(trainer: Any, model: nn.Module) -> nn.Module:
    """The DDP wrapper ultralytics' ``_setup_train`` builds, around the slim module."""
    from ultralytics.utils.torch_utils import TORCH_2_13

    kw: dict[str, Any] = {"static_graph": bool(trainer.args.compile)}
    kw["forward_sync_buffers" if TORCH_2_13 else "broadcast_buffers"] = False
    device_ids = None if trainer.device.type == "cpu" else [trainer.device.index]
    return nn.parallel.DistributedDataParallel(
        model, device_ids=device_ids, find_unused_parameters=not bool(trainer.args.compile), **kw
    )


class PruningEngine:
    """One pruning run inside a trainer: ``start`` after setup, ``before_clip``/``after_step`` around each
    optimizer step, ``slim`` when the method is done, ``state`` for the checkpoint."""

    def __init__(self, options: PruningOptions | None) -> None:
        self.options = options
        self.pruner: Pruner | None = None
        self.loss: PenaltyLoss | None = None
        self.phase = "setup"  # setup -> regularizing -> pruned
        self.summary: dict[str, Any] = {}
        self.distiller: Distiller | None = None  # held here, not by the model: checkpoints stay teacher-free

    @property
    def active(self) -> bool:
        return self.pruner is not None

    def start(self, trainer: Any, state: dict[str, Any] | None = None) -> None:
        """Analyse the trainer's model and start the method, or continue from a checkpoint's ``state``."""
        for key in ("compile", "quantize", "distill_model"):
            if getattr(trainer.args, key, None) not in (None, False, 0, ""):
                raise ValueError(
                    f"pruning does not support the ultralytics setting {key}={getattr(trainer.args, key)}"
                )
        if state is not None:
            self.options = PruningOptions.from_dict(state["options"])
            self.summary = dict(state.get("summary") or {})
            if state["phase"] == "pruned":
                self.phase = "pruned"
                log.info("fxprune: resuming the fine-tuning of a pruned model")
                self.start_distillation(trainer, resumed=True)
                self._install_distillation(_unwrap(trainer.model))
                return
        if self.options is None:
            raise ValueError("no pruning options: use pruning_options(...) or set $FXPRUNE_ULTRALYTICS")
        self.start_distillation(trainer, resumed=state is not None)
        model = _unwrap(trainer.model)
        x = example_input(model, int(trainer.args.imgsz))
        self.summary.setdefault("dense", {"params": count_params(model), "flops": count_flops(model, x)})
        self.summary["imgsz"] = int(trainer.args.imgsz)
        self.pruner = make_pruner(model, x, self.options)
        if state is not None and state.get("pruner") is not None:
            self.pruner.load_state_dict(state["pruner"])
            log.info("fxprune: resuming %s at iteration %d", self.options.method, self.pruner.iteration)
        self.phase = "regularizing"
        if self.pruner.done:  # one-shot methods prune before the first step
            self.slim(trainer)
            return
        self._install_distillation(model)
        self.loss = PenaltyLoss(_criterion(model), self.pruner)
        model.criterion = self.loss

    def start_distillation(self, trainer: Any, resumed: bool) -> None:
        """Freeze the teacher when the options ask for distillation: the given ``teacher`` checkpoint,
        else the trainer's (still dense) model, whose checkpoint path is stored for a resumed run."""
        opts = self.options
        if opts is None or not opts.distilling or self.distiller is not None:
            return
        model = _unwrap(trainer.model)
        device = next(model.parameters()).device
        if opts.teacher is not None:
            teacher = load_teacher(opts.teacher, device)
        elif resumed:
            raise ValueError(
                "cannot resume distillation: the run did not start from a checkpoint file and no teacher "
                "path is stored; give teacher=PATH when starting such runs"
            )
        else:
            teacher = freeze_teacher(model).to(device)
            source = str(getattr(trainer.args, "model", "") or "")
            if source.endswith(".pt") and os.path.isfile(source):
                opts.teacher = os.path.abspath(source)
        self.distiller = Distiller(teacher, opts.distill, opts.distill_feat)
        log.info(
            "fxprune: distilling from %s (weight %g, features %g)",
            opts.teacher or "the dense model",
            opts.distill,
            opts.distill_feat,
        )

    def _install_distillation(self, model: nn.Module) -> None:
        """Wrap the model's criterion with the distillation loss (once)."""
        if self.distiller is None or isinstance(getattr(model, "criterion", None), DistillLoss):
            return
        model.criterion = DistillLoss(_criterion(model), self.distiller)

    def before_clip(self, trainer: Any) -> None:
        """Add the method's gradient terms; call after ``scaler.unscale_``, before clipping."""
        if self.pruner is not None:
            images = self.loss.take_images() if self.loss is not None else 1
            self.pruner.after_backward(StepScale(images))

    def after_step(self, trainer: Any) -> None:
        """Advance the schedule by one optimizer step; slim when the method is done."""
        if self.pruner is not None:
            self.pruner.step()
            if self.pruner.done:
                self.slim(trainer)

    def slim(self, trainer: Any) -> None:
        """Remove the chosen channels in place (verified), then rebuild optimizer, schedule, EMA, DDP."""
        model = _unwrap(trainer.model)
        if isinstance(getattr(model, "criterion", None), PenaltyLoss):
            model.criterion = model.criterion.criterion
        calibration = calibration_batches(trainer) if self._wants_calibration() else None
        report = self.pruner.prune(calibration=calibration) if calibration else self.pruner.prune()
        sync_width_attributes(model)
        x = example_input(model, int(trainer.args.imgsz))
        self.summary["pruned"] = {"params": count_params(model), "flops": count_flops(model, x)}
        self.summary["at"] = {"epoch": int(getattr(trainer, "epoch", 0)), "iteration": self.pruner.iteration}
        self.summary["widths"] = [list(w) for w in getattr(report, "widths", [])]
        latency = _latency_summary(getattr(self.pruner, "planner", None))
        if latency is not None:
            self.summary["latency"] = latency
        self.pruner, self.loss, self.phase = None, None, "pruned"
        rebuild_after_slimming(trainer)
        self._install_distillation(model)
        pruned = self.summary["pruned"]
        log.info(
            "fxprune: pruned with %s (%s, %s): %d params, %d FLOPs at %d px",
            self.options.method,
            self.options.size,
            self.options.alignment,
            pruned["params"],
            pruned["flops"],
            int(trainer.args.imgsz),
        )

    def _wants_calibration(self) -> bool:
        """A method choosing from feature maps (``ccm``) that has not trained yet needs a few batches."""
        return type(self.pruner.method).calibrate is not Method.calibrate and self.pruner.iteration == 0

    def state(self) -> dict[str, Any]:
        """The pruning state saved with every checkpoint (plain data: loads with ``weights_only=True``)."""
        return {
            "version": 1,
            "options": self.options.to_dict() if self.options is not None else None,
            "phase": self.phase,
            "pruner": self.pruner.state_dict() if self.pruner is not None else None,
            "summary": self.summary,
        }
