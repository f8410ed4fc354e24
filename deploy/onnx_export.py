"""Export a PyTorch model to ONNX, check the file and compare onnxruntime's outputs with torch."""

from __future__ import annotations

import contextlib
import io
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fxprune.capture import as_args_kwargs
from fxprune.threads import one_thread
from fxprune.verify.compare import flatten_outputs

__all__ = ["ExportResult", "export_onnx", "onnx_input_names", "ort_parity"]


@dataclass
class ExportResult:
    """An exported ONNX file and how well onnxruntime reproduces torch on the example inputs."""

    path: Path
    opset: int
    dynamic_batch: bool
    exporter: str
    seconds: float
    checked: bool
    max_abs_error: float | None = None
    max_rel_error: float | None = None
    outputs: int = 0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["path"] = str(self.path)
        return d


def _export_kwargs(names: list[str], n_out: int, dynamic_batch: bool) -> dict[str, Any]:
    out_names = [f"output{i}" for i in range(n_out)]
    kw: dict[str, Any] = {"input_names": names, "output_names": out_names}
    if dynamic_batch:
        kw["dynamic_axes"] = {n: {0: "batch"} for n in names + out_names}
    return kw


def export_onnx(
    model: nn.Module,
    example_inputs: Any,
    path: str | os.PathLike[str],
    *,
    opset: int = 17,
    dynamic_batch: bool = False,
    dynamo: bool = False,
    check: bool = True,
    parity: bool = True,
) -> ExportResult:
    """Export ``model`` (eval mode, no grad) to ``path`` with ``torch.onnx.export``.

    The file is validated with ``onnx.checker`` (``check``) and run with onnxruntime on the example
    inputs, whose outputs are compared with torch's (``parity``: max absolute and relative error).
    ``dynamo=False`` uses the TorchScript exporter (fast, one file); ``dynamo=True`` the torch.export one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args, kwargs = as_args_kwargs(example_inputs)
    if kwargs:
        raise ValueError("ONNX export needs positional example inputs (a tensor or a tuple of tensors)")
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with one_thread(), torch.no_grad():
            reference = model(*args)
            n_out = len(flatten_outputs(reference))
            names = [f"input{i}" for i in range(len(args))] if len(args) > 1 else ["input"]
            kw = _export_kwargs(names, n_out, dynamic_batch)
            if dynamo:
                kw["dynamic_shapes"] = None
                kw.pop("dynamic_axes", None)
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    model,
                    tuple(args),
                    str(path),
                    opset_version=opset,
                    dynamo=dynamo,
                    external_data=False,
                    **kw,
                )
    finally:
        model.train(was_training)
    result = ExportResult(
        path, opset, dynamic_batch, "dynamo" if dynamo else "torchscript", time.perf_counter() - start, False
    )
    if check:
        import onnx

        onnx.checker.check_model(str(path))
        result.checked = True
    if parity:
        result.max_abs_error, result.max_rel_error, result.outputs = ort_parity(path, reference, args)
    return result


def onnx_input_names(path: str | os.PathLike[str]) -> list[str]:
    """Names of the graph inputs of an ONNX file (initializers excluded)."""
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    inits = {i.name for i in m.graph.initializer}
    return [i.name for i in m.graph.input if i.name not in inits]


def ort_parity(
    path: str | os.PathLike[str], reference: Any, args: tuple[Any, ...], threads: int = 1
) -> tuple[float, float, int]:
    """Run the ONNX file with onnxruntime (CPU) and compare with torch's ``reference`` outputs.

    Returns ``(max absolute error, max relative error, number of outputs)``; the relative error of a
    tensor is ``max|a - b| / max|a|``. Raises ``ValueError`` when the outputs do not line up.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    feeds = {i.name: a.detach().cpu().numpy() for i, a in zip(sess.get_inputs(), args)}
    got = sess.run(None, feeds)
    ref = [t for _, t in flatten_outputs(reference)]
    if len(got) != len(ref):
        raise ValueError(f"onnxruntime returned {len(got)} outputs, torch {len(ref)}")
    worst_abs = worst_rel = 0.0
    for i, (a, b) in enumerate(zip(ref, got)):
        a = a.detach().cpu().double().numpy()
        b = np.asarray(b, dtype=np.float64)
        if a.shape != b.shape:
            raise ValueError(f"output {i}: torch shape {a.shape}, onnxruntime {b.shape}")
        err = float(np.abs(a - b).max()) if a.size else 0.0
        worst_abs = max(worst_abs, err)
        worst_rel = max(worst_rel, err / (float(np.abs(a).max()) + 1e-12) if a.size else 0.0)
    return worst_abs, worst_rel, len(ref)
