"""Graph capture: symbolic tracing with leaf layers, torch.export as the fallback."""

from .capture import Captured, capture
from .errors import CaptureError
from .inputs import as_args_kwargs, run_model
from .outputs import OutputSelector, select_outputs, selected_tensors
from .tracer import LeafTracer

__all__ = [
    "Captured",
    "CaptureError",
    "LeafTracer",
    "OutputSelector",
    "as_args_kwargs",
    "capture",
    "run_model",
    "select_outputs",
    "selected_tensors",
]
