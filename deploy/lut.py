"""Per-layer latency lookup table for one backend, cached on disk.

A key describes one conv or linear layer completely (channels, kernel, stride, padding, dilation, groups,
input size, batch); its value is the layer's latency in ms on the backend, minus the backend's per-call
overhead (the latency of a trivial layer). Each layer is timed interleaved with a fixed reference layer
and stored as ratio x the reference's latency, so a burst of load on a shared machine during one
measurement does not distort the table.
"""

from __future__ import annotations

import contextlib
import functools
import gc
import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from .backends.base import cpu_name
from .layer_files import write_layer_onnx, write_layer_openvino_ir, write_layer_qdq_onnx

__all__ = [
    "LatencyTable",
    "LayerShape",
    "REFERENCE_LAYER",
    "default_table_path",
    "frozen_heap",
]


@dataclass(frozen=True)
class LayerShape:
    """A conv (``kind="conv"``, input ``batch x cin x h x w``) or linear layer (input ``h x cin``)."""

    kind: str
    cin: int
    cout: int
    h: int
    w: int = 1
    batch: int = 1
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    act: str = ""  # "silu": the conv's output goes through SiLU, timed with it as one unit (conv only)

    @property
    def key(self) -> str:
        if self.kind == "linear":
            return f"linear:{self.h}x{self.cin}->{self.cout}:b{int(self.bias)}"
        k, s, p, d = (f"{a}x{b}" for a, b in (self.kernel, self.stride, self.padding, self.dilation))
        return (
            f"conv:{self.batch}x{self.cin}x{self.h}x{self.w}->{self.cout}:k{k}:s{s}:p{p}:d{d}"
            f":g{self.groups}:b{int(self.bias)}" + (f":{self.act}" if self.act else "")
        )

    def with_channels(self, cin: int, cout: int) -> LayerShape:
        """The same layer with other channel counts (a depthwise conv keeps groups == channels)."""
        groups = cin if self.depthwise else self.groups
        return replace(self, cin=cin, cout=cout, groups=groups)

    @property
    def depthwise(self) -> bool:
        return self.kind == "conv" and self.groups > 1 and self.groups == self.cin == self.cout

    def build(self) -> tuple[nn.Module, torch.Tensor]:
        """The layer with random weights and a random input (``nn.Sequential(conv, nn.SiLU())`` for a conv
        with ``act="silu"``)."""
        if self.kind == "linear":
            return nn.Linear(self.cin, self.cout, bias=self.bias).eval(), torch.randn(self.h, self.cin)
        if self.act not in ("", "silu"):
            raise ValueError(f"unknown layer activation {self.act!r}; known: silu")
        conv = nn.Conv2d(
            self.cin, self.cout, self.kernel, self.stride, self.padding, self.dilation, self.groups, self.bias
        )
        layer = nn.Sequential(conv, nn.SiLU()) if self.act else conv
        return layer.eval(), torch.randn(self.batch, self.cin, self.h, self.w)


_OVERHEAD = LayerShape("conv", 8, 8, 1, 1)
REFERENCE_LAYER = LayerShape("conv", 32, 32, 28, 28, kernel=(3, 3), padding=(1, 1))
"""The layer every entry is timed against, interleaved (entries are stored as ratios to it)."""


@contextlib.contextmanager
def frozen_heap() -> Iterator[None]:
    """Move the objects alive now out of the garbage collector's reach (``gc.freeze``) for a block.

    Latency runs collect garbage before timing; in a process holding a large framework (ultralytics)
    that collection would otherwise walk every object, 0.2-1 s each time, for each of hundreds of runs.
    """
    if gc.get_freeze_count():  # someone else froze the heap: leave their state alone
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def default_table_path(backend: str, precision: str, threads: int) -> Path:
    """``$FXPRUNE_CACHE/lut/<backend>-<precision>-<threads>t-<device>.json`` (``~/.cache/fxprune``)."""
    root = Path(os.environ.get("FXPRUNE_CACHE", Path.home() / ".cache" / "fxprune"))
    device = "".join(c if c.isalnum() else "-" for c in cpu_name()).strip("-")[:40]
    return root / "lut" / f"{backend}-{precision}-{threads}t-{device}.json"


class LatencyTable:
    """Measured layer latencies (ms) for one backend, precision and thread count, kept in a JSON file."""

    def __init__(
        self,
        backend: str = "ort",
        precision: str = "fp32",
        threads: int = 1,
        path: str | os.PathLike[str] | None = None,
        *,
        repeats: int = 3,
        budget_s: float = 0.15,
    ) -> None:
        self.backend, self.precision, self.threads = backend, precision, threads
        self.path = Path(path) if path is not None else default_table_path(backend, precision, threads)
        self.repeats, self.budget_s = repeats, budget_s
        self.entries: dict[str, float] = {}
        self.measured = 0
        self.load()

    def load(self) -> None:
        """Read the cache file if it exists and matches the backend conditions."""
        if not self.path.is_file():
            return
        data = json.loads(self.path.read_text())
        if (data.get("backend"), data.get("precision"), data.get("threads")) == self.conditions:
            self.entries.update({k: float(v) for k, v in data.get("entries", {}).items()})

    def save(self) -> None:
        """Write the table to its cache file."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        backend, precision, threads = self.conditions
        data = {"backend": backend, "precision": precision, "threads": threads, "device": cpu_name()}
        data["entries"] = dict(sorted(self.entries.items()))
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=0))
        tmp.replace(self.path)

    @property
    def conditions(self) -> tuple[str, str, int]:
        return self.backend, self.precision, self.threads

    def __contains__(self, shape: LayerShape) -> bool:
        return shape.key in self.entries

    def overhead(self) -> float:
        """Latency of a trivial layer: the per-call cost every standalone measurement includes."""
        if _OVERHEAD.key not in self.entries:
            self.entries[_OVERHEAD.key] = self._alone(_OVERHEAD)
        return self.entries[_OVERHEAD.key]

    def __getitem__(self, shape: LayerShape) -> float:
        return max(self.entries[shape.key] - self.entries.get(_OVERHEAD.key, 0.0), 0.0)

    def _layer_writer(self, shape: LayerShape):
        """How a layer reaches the backend: written as a one-node fp32 ONNX file (ONNX backends), as a
        one-layer QDQ file (INT8 convolutions on backends that take uint8 Q/DQ from ONNX: onnxruntime,
        OpenVINO; a conv with its SiLU as each runtime runs it: onnxruntime's QDQ pattern, an OpenVINO IR
        with SiLU fused), or as a module (quantized by NNCF: linear layers, other INT8 backends; torch)."""
        from .backends import get_backend

        backend = get_backend(self.backend)
        if not backend.needs_onnx:
            return None
        if self.precision == "fp32":
            return write_layer_onnx
        direct = backend.requantize_convs and ".onnx" in backend.file_suffixes and shape.kind == "conv"
        if self.precision != "int8" or not direct:
            return None
        if shape.act and backend.int8_format == "openvino":  # SiLU fused into the conv, as in the IR
            return write_layer_openvino_ir
        # onnxruntime runs the QDQ file as deployed: SiLU as QLinearSigmoid + QLinearMul
        return functools.partial(write_layer_qdq_onnx, act_pairs=True)

    def _measure(self, sources: dict, x, inputs_of=None, repeats: int | None = None):
        from .runtime_latency import measure_latency

        return measure_latency(
            sources,
            x,
            self.backend,
            precision=self.precision,
            threads=self.threads,
            warmup=2,
            repeats=repeats or self.repeats,
            budget_s=self.budget_s,
            inputs_of=inputs_of,
        )

    def _alone(self, shape: LayerShape) -> float:
        """Fastest of three separate measurements (the least disturbed by other load)."""
        module, x = shape.build()
        writer = self._layer_writer(shape)
        with tempfile.TemporaryDirectory() as tmp:
            source = writer(module, x, Path(tmp) / "layer.onnx") if writer else module
            return min(self._measure({"layer": source}, x)["layer"].median_ms for _ in range(3))

    def ensure(self, shapes: Iterable[LayerShape], *, progress=None, per_run: int = 8) -> int:
        """Measure every shape not in the table yet (then save); returns how many were measured.

        Up to ``per_run`` layers are timed in one interleaved run with the reference layer (timed once
        per run, not once per layer), within the table's ``budget_s``; ONNX backends get each layer as a
        one-node ONNX file written directly (fp32; INT8 on onnxruntime and OpenVINO: a one-layer QDQ
        file, :func:`write_layer_qdq_onnx`), not through ``torch.onnx.export`` and NNCF; the garbage
        collector's existing objects are frozen, so the collection before each run stays cheap in a
        large process.
        """
        from .runtime_latency import speedup

        self.overhead()
        if REFERENCE_LAYER.key not in self.entries:
            self.entries[REFERENCE_LAYER.key] = self._alone(REFERENCE_LAYER)
        ref_module, ref_x = REFERENCE_LAYER.build()
        todo = list({s.key: s for s in shapes if s.key not in self.entries}.values())
        per_run = max(per_run, 1)
        with frozen_heap(), tempfile.TemporaryDirectory() as tmp:
            writer = self._layer_writer(REFERENCE_LAYER)
            ref = writer(ref_module, ref_x, Path(tmp) / "ref.onnx") if writer else ref_module
            for start in range(0, len(todo), per_run):
                chunk = todo[start : start + per_run]
                sources, inputs = {"ref": ref}, {}
                for i, shape in enumerate(chunk):
                    module, x = shape.build()
                    name = f"layer{i}"
                    write = self._layer_writer(shape)
                    sources[name] = write(module, x, Path(tmp) / f"{name}.onnx") if write else module
                    inputs[name] = x
                res = self._measure(sources, ref_x, inputs)
                for i, shape in enumerate(chunk):
                    ratio = speedup(res["ref"], res[f"layer{i}"])
                    self.entries[shape.key] = self.entries[REFERENCE_LAYER.key] / ratio
                    self.measured += 1
                if progress is not None:
                    progress(start + len(chunk), len(todo))
        self.save()
        return len(todo)

    def as_dict(self) -> dict:
        return {"conditions": self.conditions, "path": str(self.path), "entries": len(self.entries)}
