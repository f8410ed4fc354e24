"""GPU timing with CUDA events (torch's CUDA runtime), optionally replaying a captured CUDA graph."""

from __future__ import annotations

from collections.abc import Callable

import torch

from .base import BackendUnavailable, Runner

__all__ = ["CudaEventRunner", "require_cuda"]


def require_cuda(what: str) -> None:
    """Raise :class:`BackendUnavailable` when torch sees no CUDA device."""
    if not torch.cuda.is_available():
        raise BackendUnavailable(
            f"{what} needs an NVIDIA GPU: torch.cuda.is_available() is False here "
            f"(torch {torch.__version__}, built for CUDA {torch.version.cuda or 'none'})"
        )


class CudaEventRunner(Runner):
    """Runs ``launch`` (which enqueues work on ``stream``) and times each call with CUDA events.

    With ``graphs``, the first calls are captured once into a CUDA graph and later calls replay it,
    which removes the CPU launch overhead (a capture failure falls back to plain launches).
    """

    def __init__(
        self, launch: Callable[[], None], stream: torch.cuda.Stream, device_index: int, graphs: bool
    ) -> None:
        self.launch, self.stream = launch, stream
        self.device_name = torch.cuda.get_device_name(device_index)
        self.graph: torch.cuda.CUDAGraph | None = None
        self.graph_error: str | None = None
        if graphs:
            self._capture()

    def _capture(self) -> None:
        with torch.cuda.stream(self.stream):
            self.launch()  # a call before capture lets runtimes set up their state
        self.stream.synchronize()
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph, stream=self.stream):
                self.launch()
            self.graph = graph
        except Exception as e:  # some engines/models cannot be captured
            self.graph_error = f"{type(e).__name__}: {e}"
            torch.cuda.synchronize()

    def __call__(self) -> None:
        with torch.cuda.stream(self.stream):
            if self.graph is not None:
                self.graph.replay()
            else:
                self.launch()
        self.stream.synchronize()

    def time(self, n: int) -> list[float]:
        events = [
            (torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)
        ]
        with torch.cuda.stream(self.stream):
            for start, end in events:
                start.record(self.stream)
                if self.graph is not None:
                    self.graph.replay()
                else:
                    self.launch()
                end.record(self.stream)
        self.stream.synchronize()
        return [s.elapsed_time(e) for s, e in events]
