"""How pruning options reach an ultralytics trainer, its multi-GPU workers and a resumed run.

ultralytics refuses unknown ``train()`` keys and, for multi-GPU training, re-creates the trainer in each
worker process from its import path with only ``cfg`` and ``overrides``. The options therefore travel:

- in the environment variable ``FXPRUNE_ULTRALYTICS`` (JSON), which ``torch.distributed.run`` workers
  inherit; :func:`pruning_options` sets it for the duration of a ``train()`` call;
- in every checkpoint the trainer writes (``model.fxprune["options"]``), so ``resume=True`` needs nothing;
- as ``fxprune.json`` in the run folder, for the record.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
from collections.abc import Iterator
from typing import Any

from fxprune.regularize import get_method, method_names
from fxprune.regularize.method import make_options
from fxprune.targets import check_cost_weight

__all__ = ["DEFAULT_COST_WEIGHT", "ENV_VAR", "PruningOptions", "backend_round_to", "pruning_options"]

ENV_VAR = "FXPRUNE_ULTRALYTICS"
SCOPES = ("group", "restricted")
DEFAULT_COST_WEIGHT = 0.25
"""``cost_weight`` of FLOPs and parameter targets ranked across groups (bench/RESULTS.md section 8: YOLOv8n
at half the FLOPs after 160 epochs on coco128, mAP50-95 within 0.1-0.9 point of dense, 2.4-2.6 without)."""


@dataclasses.dataclass
class PruningOptions:
    """What to prune and how: the fields of :class:`fxprune.Pruner` in plain JSON-able values.

    Exactly one of ``ratio``, ``target_flops``, ``target_params`` and ``target_latency`` (``"0.5x"`` of the
    dense latency or ``"12ms"``, on ``backend``) sets the size; ``ratio`` defaults to 0.5. ``ratios`` maps
    module-name globs to their own ratio, ``ignore`` lists module globs whose channels must not change,
    ``method_options`` holds the method's schedule constants (``fxprune methods`` lists them).
    ``distill`` > 0 distils the dense model's head outputs (class probabilities, box distributions) into
    the pruned model with that weight, ``distill_feat`` > 0 adds similarity-preserving distillation of the
    neck outputs (see ``distill.py``); ``teacher`` is the teacher's checkpoint, by default the model the
    run starts from (its path is stored so that a resumed run reloads it).
    Kept widths are multiples of ``round_to``; None (the default) is the alignment ``backend`` wants on
    this machine (``fxprune.deploy.default_round_to(backend)``: 16 on an AVX-512 CPU, 8 with AVX2, for
    onnxruntime and OpenVINO alike; ``backend`` defaults to CPU onnxruntime, where YOLO models are usually
    exported for CPU). ``round_to=1`` keeps any width. The value used is stored in place of None (so
    workers, checkpoints and resumed runs use the same) and :attr:`alignment` says where it came from.
    Channels are ranked across groups (``global_ranking``, scores normalised by each group's mean) and
    every group keeps at least ``min_width`` = 32 channels: uniform per-group ratios cut the 16- and
    32-channel stems of small detectors as much as their wide late layers, which costs accuracy and buys
    no latency (bench/RESULTS.md section 8: YOLOv8n at half the FLOPs, +5.7 points of mAP50-95 after the
    same fine-tuning). ``global_ranking`` None (the default) resolves to True, or to False when
    ``ratios`` are given (global ranking has one ratio); ``min_width=1, global_ranking=False`` is the
    plain per-group plan.
    """

    method: str = "l1"
    ratio: float | None = None
    target_flops: float | None = None
    target_params: float | None = None
    target_latency: str | None = None
    backend: str = "ort"
    ratios: dict[str, float] = dataclasses.field(default_factory=dict)
    ignore: list[str] = dataclasses.field(default_factory=list)
    round_to: int | None = None
    min_width: int = 32
    global_ranking: bool | None = None
    cost_weight: float | None = None
    scope: str = "group"
    distill: float = 0.0
    distill_feat: float = 0.0
    teacher: str | None = None
    method_options: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.method not in method_names():
            raise ValueError(f"unknown pruning method {self.method!r}; known: {', '.join(method_names())}")
        make_options(get_method(self.method), dict(self.method_options))  # unknown constants fail here
        targets = [
            k for k in ("ratio", "target_flops", "target_params", "target_latency") if getattr(self, k)
        ]
        if len(targets) > 1:
            raise ValueError(f"give one of ratio, target_flops, target_params, target_latency; got {targets}")
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise ValueError(f"ratio must be in [0, 1), got {self.ratio}")
        for key in ("target_flops", "target_params"):
            value = getattr(self, key)
            if value is not None and not 0.0 < value < 1.0:
                raise ValueError(f"{key} is a fraction of the dense model in (0, 1), got {value}")
        for key in ("distill", "distill_feat"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"{key} is a loss weight >= 0 (0 turns it off), got {value!r}")
        if self.scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {self.scope!r}")
        if self.global_ranking is None:
            self.global_ranking = not self.ratios
        elif self.global_ranking and self.ratios:
            raise ValueError("ratios= sets per-module ratios, which global_ranking=True does not follow")
        self._resolve_cost_weight()
        self.round_to_source = "given"
        if self.round_to is None:
            self.round_to = backend_round_to(self.backend)
            self.round_to_source = f"default for {self.backend} on this machine"
        if not isinstance(self.round_to, int) or isinstance(self.round_to, bool):
            raise ValueError(f"round_to must be a positive int (1 keeps any width), got {self.round_to!r}")
        if self.round_to < 1 or self.min_width < 1:
            raise ValueError("round_to and min_width must be >= 1")

    def _resolve_cost_weight(self) -> None:
        sized = self.target_flops is not None or self.target_params is not None
        if self.cost_weight is None:
            self.cost_weight = DEFAULT_COST_WEIGHT if sized and self.global_ranking else 0.0
        check_cost_weight(self.cost_weight, sized=sized, global_ranking=self.global_ranking)

    @property
    def alignment(self) -> str:
        """The channel alignment in words, e.g. ``round_to=16 (default for ort on this CPU)``."""
        if self.round_to_source == "given":
            return f"round_to={self.round_to}"
        return f"round_to={self.round_to} ({self.round_to_source}; round_to=1 keeps any width)"

    @property
    def size(self) -> str:
        """The size setting in words, e.g. ``target_flops=0.5``."""
        for key in ("target_flops", "target_params", "target_latency"):
            if getattr(self, key) is not None:
                return f"{key}={getattr(self, key)}"
        return f"ratio={0.5 if self.ratio is None else self.ratio}"

    @property
    def distilling(self) -> bool:
        """Whether the run distils from a teacher."""
        return bool(self.distill or self.distill_feat)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PruningOptions:
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - fields)
        if unknown:
            raise ValueError(f"unknown pruning options {unknown}; valid: {', '.join(sorted(fields))}")
        return cls(**data)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_env(cls) -> PruningOptions | None:
        """The options in ``$FXPRUNE_ULTRALYTICS``, or None when it is unset."""
        text = os.environ.get(ENV_VAR)
        return None if not text else cls.from_dict(json.loads(text))


def backend_round_to(backend: str) -> int:
    """``fxprune.deploy.default_round_to(backend)``: the channel multiple ``backend`` wants here."""
    from fxprune.deploy import default_round_to

    return default_round_to(backend)


@contextlib.contextmanager
def pruning_options(options: PruningOptions | None = None, **fields: Any) -> Iterator[PruningOptions]:
    """Set ``$FXPRUNE_ULTRALYTICS`` for a ``train()`` call (and the workers it launches), then restore it.

    Example::

        with pruning_options(method="greg1", target_flops=0.5):
            YOLO("yolov8n.pt").train(data="coco128.yaml", epochs=30, trainer=PruneDetectionTrainer)
    """
    opts = options if options is not None else PruningOptions(**fields)
    previous = os.environ.get(ENV_VAR)
    os.environ[ENV_VAR] = opts.to_json()
    try:
        yield opts
    finally:
        if previous is None:
            os.environ.pop(ENV_VAR, None)
        else:
            os.environ[ENV_VAR] = previous
