"""Callbacks-only pruning, for users who keep their own trainer class.

Example::

    model = YOLO("yolov8n.pt")
    engine = add_pruning(model, method="l1", target_flops=0.5)
    model.train(data="coco128.yaml", epochs=10, trainer=MyTrainer)

What it cannot do, compared with the pruning trainers (``PruneDetectionTrainer`` and friends):

- gradient terms are applied in an optimizer pre-step hook, i.e. after gradient clipping (no callback
  fires between ``backward`` and the optimizer step);
- the trainer's ``get_model`` is not replaced: ultralytics' default rebuilds the model from its yaml, so
  a pruned checkpoint cannot be trained again or resumed (``resume=True``) through this mode;
- callbacks do not reach multi-GPU workers.
"""

from __future__ import annotations

from typing import Any

from .engine import STATE_ATTR, PruningEngine
from .options import PruningOptions

__all__ = ["add_pruning"]


def add_pruning(model: Any, options: PruningOptions | None = None, **fields: Any) -> PruningEngine:
    """Register pruning callbacks on ``model`` (a ``YOLO``); returns the engine (its ``summary`` after)."""
    engine = PruningEngine(options if options is not None else PruningOptions(**fields))
    stepped = {"hook": None, "count": 0}

    def on_pretrain_routine_end(trainer: Any) -> None:
        engine.start(trainer)
        if engine.active:
            stepped["hook"] = trainer.optimizer.register_step_pre_hook(pre_step)

    def pre_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        engine.before_clip(None)  # the gradients are unscaled here (GradScaler.step unscales first)
        stepped["count"] += 1

    def on_train_batch_end(trainer: Any) -> None:
        while stepped["count"] and engine.active:
            stepped["count"] -= 1
            engine.after_step(trainer)
        stepped["count"] = 0

    def on_train_epoch_end(trainer: Any) -> None:
        if engine.active and trainer.epoch >= trainer.epochs - 1:
            engine.slim(trainer)
        setattr(trainer.ema.ema, STATE_ATTR, engine.state())

    model.add_callback("on_pretrain_routine_end", on_pretrain_routine_end)
    model.add_callback("on_train_batch_end", on_train_batch_end)
    model.add_callback("on_train_epoch_end", on_train_epoch_end)
    return engine
