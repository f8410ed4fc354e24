"""Python's cyclic garbage collector paused while a call builds many short-lived objects.

Tracing, channel propagation and verification create tens of thousands of small objects (graph nodes,
labels, hooks); each allocation burst can set off a full collection that walks every object in the
process (0.1-0.3 s in a process holding torch and a few models), several times per call. Pausing the
collector for the call and re-enabling it afterwards leaves the garbage to the next collection, which
runs at the usual thresholds once the call returns.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

__all__ = ["paused_gc"]


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """Run the block with automatic garbage collection off (nested use is fine), then restore it."""
    if not gc.isenabled():
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()
