"""The error raised when a model cannot be captured as a graph."""

from __future__ import annotations

import os
import traceback

import torch

_TORCH_DIR = os.path.dirname(torch.__file__)


class CaptureError(RuntimeError):
    """A model could not be captured by symbolic tracing nor by torch.export.

    ``module`` is the qualified name of the innermost module being traced when capture failed and
    ``op`` the source line that blocked it.
    """

    def __init__(self, message: str, module: str | None = None, op: str | None = None):
        super().__init__(message)
        self.module = module
        self.op = op


def blocking_source_line(exc: BaseException) -> str | None:
    """Return ``file:line: code`` of the innermost frame outside torch that raised ``exc``."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith(_TORCH_DIR)]
    if not frames:
        return None
    f = frames[-1]
    return f"{os.path.basename(f.filename)}:{f.lineno}: {(f.line or '').strip()}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else ""


def capture_error(
    model: torch.nn.Module, fx_error: BaseException, module: str | None, export_error: BaseException | None
) -> CaptureError:
    """Build a :class:`CaptureError` that names the blocking module and op and says how to proceed."""
    op = blocking_source_line(fx_error)
    where = module or "<top level>"
    cls = type(model.get_submodule(module)).__name__ if module else type(model).__name__
    lines = [
        f"fxprune could not capture {type(model).__name__} as a graph.",
        f"  blocked in module '{where}' ({cls})" + (f" at {op}" if op else ""),
        f"  symbolic tracing: {type(fx_error).__name__}: {_first_line(fx_error)}",
    ]
    if export_error is not None:
        lines.append(f"  torch.export: {type(export_error).__name__}: {_first_line(export_error)}")
    lines += [
        "How to proceed:",
        f"  - declare the module as a leaf: leaf_modules=['{where}'] (its channels are then kept),",
        "  - or pass example inputs of the form forward() expects (tensor, tuple or dict of kwargs),",
        "  - or move data-dependent Python control flow out of forward().",
    ]
    return CaptureError("\n".join(lines), module=module, op=op)
