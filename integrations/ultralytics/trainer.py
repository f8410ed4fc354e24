"""Pruning trainers: ultralytics' own trainers that prune inside their training run.

Example::

    from ultralytics import YOLO
    from fxprune.integrations.ultralytics import PruneDetectionTrainer, pruning_options

    with pruning_options(method="greg1", target_flops=0.5, method_options={"interval": 5}):
        YOLO("yolov8n.pt").train(data="coco128.yaml", epochs=30, trainer=PruneDetectionTrainer)

The run analyses the model (decoded predictions are the interface: the neck is pruned), applies the
method inside ultralytics' loop (loss terms in the loss, gradient terms after ``scaler.unscale_`` and
before gradient clipping), slims the model in place when the method is done (one-shot methods: before
the first step), rebuilds optimizer, schedule, EMA and DDP wrapper, and fine-tunes for the remaining
epochs. If the method is still regularizing when the last epoch starts, it prunes then (a one-epoch run:
at the end of the epoch). Checkpoints are written by ultralytics' ``save_model`` and carry the pruning
state in ``model.fxprune``: ``YOLO("best.pt")`` loads the slim model and ``resume=True`` continues where
the run stopped. The classes live in an importable module so that multi-GPU workers re-create them.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from ultralytics.cfg import DEFAULT_CFG
from ultralytics.models.yolo.classify import ClassificationTrainer
from ultralytics.models.yolo.detect import DetectionTrainer
from ultralytics.models.yolo.obb import OBBTrainer
from ultralytics.models.yolo.pose import PoseTrainer
from ultralytics.models.yolo.segment import SegmentationTrainer
from ultralytics.utils import LOGGER, RANK, YAML
from ultralytics.utils.torch_utils import unwrap_model

from .engine import STATE_ATTR, PruningEngine
from .options import PruningOptions

__all__ = [
    "TRAINERS",
    "PruneClassificationTrainer",
    "PruneDetectionTrainer",
    "PruneOBBTrainer",
    "PrunePoseTrainer",
    "PruneSegmentationTrainer",
    "PruningTrainerMixin",
]


class PruningTrainerMixin:
    """Adds pruning to an ultralytics trainer class (put it first in the bases)."""

    def __init__(self, cfg=DEFAULT_CFG, overrides: dict | None = None, _callbacks: dict | None = None):
        super().__init__(cfg, overrides, _callbacks)
        self.pruning = PruningEngine(PruningOptions.from_env())
        if self.pruning.options is None and not self.resume:
            raise ValueError(
                "no pruning options: wrap train() in pruning_options(...) or set $FXPRUNE_ULTRALYTICS"
            )
        if self.pruning.options is not None and RANK in {-1, 0}:
            YAML.save(self.save_dir / "fxprune.yaml", self.pruning.options.to_dict())
        self.add_callback("on_train_epoch_start", _prune_before_last_epoch)
        self.add_callback("on_train_epoch_end", _prune_at_end_of_last_epoch)

    def get_model(self, cfg=None, weights=None, verbose: bool = True):
        """The given model itself (slim or dense), never a yaml rebuild; a fresh model when none is given."""
        if isinstance(weights, nn.Module) and getattr(weights, "nc", None) == self.data["nc"]:
            return weights.float()
        return super().get_model(cfg=cfg, weights=weights, verbose=verbose)

    def _setup_train(self):
        super()._setup_train()
        state = getattr(unwrap_model(self.model), STATE_ATTR, None) if self.resume else None
        self.pruning.start(self, state)

    def optimizer_step(self):
        """ultralytics' step with the method's gradient terms between ``unscale_`` and clipping."""
        if not self.pruning.active:
            return super().optimizer_step()
        self.scaler.unscale_(self.optimizer)
        self.pruning.before_clip(self)
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), max_norm=10.0)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema:
            self.ema.update(self.model)
        self.pruning.after_step(self)

    def save_model(self):
        setattr(self.ema.ema, STATE_ATTR, self.pruning.state())
        return super().save_model()


def _prune_before_last_epoch(trainer: Any) -> None:
    if trainer.pruning.active and trainer.epochs > 1 and trainer.epoch == trainer.epochs - 1:
        LOGGER.warning("fxprune: regularization did not finish before the last epoch; pruning now")
        trainer.pruning.slim(trainer)


def _prune_at_end_of_last_epoch(trainer: Any) -> None:
    if trainer.pruning.active and trainer.epoch >= trainer.epochs - 1:
        LOGGER.warning("fxprune: regularization did not finish within the run; pruning without fine-tuning")
        trainer.pruning.slim(trainer)


class PruneDetectionTrainer(PruningTrainerMixin, DetectionTrainer):
    """``DetectionTrainer`` that prunes (see the module docstring)."""


class PruneSegmentationTrainer(PruningTrainerMixin, SegmentationTrainer):
    """``SegmentationTrainer`` that prunes."""


class PrunePoseTrainer(PruningTrainerMixin, PoseTrainer):
    """``PoseTrainer`` that prunes."""


class PruneOBBTrainer(PruningTrainerMixin, OBBTrainer):
    """``OBBTrainer`` that prunes."""


class PruneClassificationTrainer(PruningTrainerMixin, ClassificationTrainer):
    """``ClassificationTrainer`` that prunes."""


TRAINERS = {
    "detect": PruneDetectionTrainer,
    "segment": PruneSegmentationTrainer,
    "pose": PrunePoseTrainer,
    "obb": PruneOBBTrainer,
    "classify": PruneClassificationTrainer,
}
