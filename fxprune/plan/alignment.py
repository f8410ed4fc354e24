"""The default channel alignment (``round_to``) when nothing is known about the deployment target.

Runtimes pad channel counts to their vector or tensor-core width, so a layer whose width is just above a
multiple costs as much as the next multiple, and removing a few channels can make a model slower than
dense. Every planner of the core therefore keeps widths multiples of :data:`DEFAULT_ROUND_TO` unless told
otherwise; ``fxprune.deploy.default_round_to`` gives the multiple a known backend and precision want.
``round_to=1`` opts out.
"""

from __future__ import annotations

__all__ = ["DEFAULT_ROUND_TO", "resolve_round_to"]

DEFAULT_ROUND_TO = 8
"""Channel multiple used when ``round_to`` is None: AVX2 fp32 lanes and GPU fp16/fp32 tensor-core tiles."""


def resolve_round_to(round_to: int | None) -> int:
    """``round_to`` checked (a positive int), or :data:`DEFAULT_ROUND_TO` when it is None."""
    if round_to is None:
        return DEFAULT_ROUND_TO
    if isinstance(round_to, bool) or not isinstance(round_to, int) or round_to < 1:
        raise ValueError(f"round_to must be a positive int (1 keeps any width) or None, got {round_to!r}")
    return round_to
