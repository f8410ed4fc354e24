"""Exported model files on the local CPU runtimes: ``.onnx`` on onnxruntime, ``.xml`` IR on OpenVINO.

:func:`run_artifact` runs a file on inputs (for parity and accuracy checks). To time such files, give
their paths to :func:`fxprune.deploy.measure_latency` (the ``openvino`` backend reads ``.xml`` IR as well).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

__all__ = [
    "ARTIFACT_RUNTIMES",
    "artifact_runner",
    "ir_input_shape",
    "run_artifact",
]

ARTIFACT_RUNTIMES = {".onnx": "ort", ".xml": "openvino"}


def ir_input_shape(path: str | os.PathLike[str]) -> tuple[int, ...]:
    """Static shape of the first input of an OpenVINO IR (``.xml``); ValueError when it is dynamic."""
    import openvino as ov

    shape = ov.Core().read_model(str(path)).inputs[0].get_partial_shape()
    if shape.is_dynamic:
        raise ValueError(f"{path} has a dynamic input shape; give one with --input, e.g. 1,3,224,224")
    return tuple(int(d) for d in shape.to_shape())


def artifact_runner(
    path: str | os.PathLike[str], threads: int = 1, runtime: str | None = None
) -> Callable[[Sequence[np.ndarray]], list[np.ndarray]]:
    """A function running the file at ``path`` on a list of input arrays, returning its outputs.

    ``runtime``: ``"ort"`` or ``"openvino"`` (default: onnxruntime for ``.onnx``, OpenVINO for ``.xml``).
    """
    path = Path(path)
    runtime = runtime or ARTIFACT_RUNTIMES.get(path.suffix)
    if runtime == "ort":
        from .backends.ort import ort_session

        sess = ort_session(path, threads, ["CPUExecutionProvider"])
        names = [i.name for i in sess.get_inputs()]
        return lambda xs: sess.run(None, dict(zip(names, xs)))
    if runtime == "openvino":
        import openvino as ov

        core = ov.Core()
        config = {
            "PERFORMANCE_HINT": "LATENCY",
            "NUM_STREAMS": "1",
            "INFERENCE_NUM_THREADS": str(threads),
            "INFERENCE_PRECISION_HINT": "f32",  # not bf16 on CPUs that have it: parity is against fp32
        }
        compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        request = compiled.create_infer_request()

        def run(xs: Sequence[np.ndarray]) -> list[np.ndarray]:
            result = request.infer(list(xs))
            return [np.array(result[o]) for o in compiled.outputs]

        return run
    raise ValueError(
        f"no local runtime for {path} (runtime {runtime!r}); known: .onnx (ort), .xml (openvino)"
    )


def run_artifact(
    path: str | os.PathLike[str], inputs: Sequence[torch.Tensor], threads: int = 1, runtime: str | None = None
) -> list[np.ndarray]:
    """Outputs of the model file at ``path`` on ``inputs`` (one call)."""
    run = artifact_runner(path, threads, runtime)
    return run([t.detach().cpu().numpy() for t in inputs])
