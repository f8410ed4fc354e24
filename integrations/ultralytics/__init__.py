"""Prune, fine-tune and export ultralytics YOLO models inside ultralytics' own training pipeline.

- :class:`PruneDetectionTrainer` (and the segment, pose, OBB and classify variants): ultralytics
  trainers that prune during ``train()``; options travel with :func:`pruning_options`.
- :func:`add_pruning`: the same through callbacks, for users who keep their own trainer class.
- :class:`Distiller` / :class:`DistillLoss`: distillation from the dense model while the pruned model
  fine-tunes (``distill=``, ``distill_feat=``, ``teacher=`` in :class:`PruningOptions`).
- :func:`deployment_form`: a copy whose heads return the decoded predictions only, as exported.
- :func:`yolo_interface`: the ``outputs=`` selector that makes the decoded predictions the interface of
  an ultralytics model (so the neck is pruned), for ``fxprune.prune``/``fxprune.Pruner``.
"""

from .callbacks import add_pruning
from .distill import Distiller, DistillLoss
from .engine import STATE_ATTR, PruningEngine
from .interface import deployment_form, example_input, is_ultralytics_model, yolo_interface
from .options import ENV_VAR, PruningOptions, pruning_options
from .trainer import (
    TRAINERS,
    PruneClassificationTrainer,
    PruneDetectionTrainer,
    PruneOBBTrainer,
    PrunePoseTrainer,
    PruneSegmentationTrainer,
    PruningTrainerMixin,
)

__all__ = [
    "ENV_VAR",
    "STATE_ATTR",
    "TRAINERS",
    "DistillLoss",
    "Distiller",
    "PruneClassificationTrainer",
    "PruneDetectionTrainer",
    "PruneOBBTrainer",
    "PrunePoseTrainer",
    "PruneSegmentationTrainer",
    "PruningEngine",
    "PruningOptions",
    "PruningTrainerMixin",
    "add_pruning",
    "deployment_form",
    "example_input",
    "is_ultralytics_model",
    "pruning_options",
    "yolo_interface",
]
