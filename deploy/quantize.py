"""INT8 post-training quantization of a (slimmed) model with NNCF: OpenVINO IR or QDQ ONNX.

Quantize after slimming, never before: per-channel scales follow the weights' output channels.
Both routes start from the model's ONNX export (the file every other runtime here takes):

- ``backend="openvino"``: ``ov.convert_model`` on it, ``nncf.quantize`` on the OpenVINO model (the route
  ultralytics' INT8 export takes), saved as ``.xml`` + ``.bin`` IR; OpenVINO runs it with VNNI/AMX kernels.
- ``backend="onnx"``: ``nncf.quantize`` on the ONNX model, saved as an ONNX file with standard
  ``QuantizeLinear``/``DequantizeLinear`` pairs (no custom ops), which onnxruntime runs with its INT8
  kernels and TensorRT builds as an explicitly quantized, strongly typed network. NNCF leaves the outputs
  of convolutions followed by an activation onnxruntime cannot fold (SiLU) unquantized, and onnxruntime
  runs those convolutions in fp32; calibrated Q/DQ pairs on such convolutions' outputs (and on inputs
  that are a Concat of quantized branches) let it run them as ``QLinearConv`` (:mod:`fxprune.deploy.qdq`).
  Where pairs are added, activations are written as uint8 (onnxruntime's x86 INT8 convolutions take
  uint8 activations); ``requantize_convs=False`` keeps NNCF's int8 file, which with the performance
  preset (zero points 0) is the form TensorRT's explicit quantization takes.

Detection heads (ultralytics ``Detect`` and its subclasses) keep their decode arithmetic in float, as
ultralytics' own INT8 export does: every op of the head's own forward and of its DFL is ignored.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import logging
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fxprune.capture import as_args_kwargs

from .calibration import CalibrationBatches, forward_input_names
from .onnx_export import export_onnx, onnx_input_names
from .qdq import quantize_sigmoid_gates, requantize_conv_outputs, softmax_on_last_axis

__all__ = [
    "BACKENDS",
    "DETECTION_HEADS",
    "QuantizeResult",
    "detection_head_names",
    "head_float_ops",
    "is_quantized",
    "quantize",
    "require",
]

BACKENDS = ("openvino", "onnx")
DETECTION_HEADS = ("Detect", "Segment", "Pose", "OBB", "v10Detect", "WorldDetect", "YOLOEDetect")
_HINTS = {
    "nncf": "INT8 quantization needs NNCF: pip install nncf",
    "openvino": "OpenVINO INT8 export needs OpenVINO: pip install openvino",
    "onnx": "ONNX export needs onnx: pip install onnx",
}


@dataclass
class QuantizeResult:
    """A quantized artifact (``path``: ``.xml`` IR or QDQ ``.onnx``) and how it was made."""

    path: Path
    backend: str
    source_onnx: Path
    samples: int
    quantized_ops: int
    seconds: float
    preset: str
    ignored: list[str] = field(default_factory=list)
    requantized: list[str] = field(default_factory=list)
    gates: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.update(path=str(self.path), source_onnx=str(self.source_onnx), ignored=len(self.ignored))
        d.update(requantized=len(self.requantized), gates=len(self.gates))
        return d


def require(module: str):
    """Import ``module`` (``nncf``, ``openvino``, ``onnx``) or raise ImportError with the install command."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(_HINTS.get(module, f"pip install {module}")) from e


def detection_head_names(model: nn.Module) -> list[str]:
    """Module names of ultralytics-style detection heads (``Detect`` and subclasses) in ``model``."""
    return [
        name
        for name, m in model.named_modules()
        if name and any(c.__name__ in DETECTION_HEADS for c in type(m).__mro__)
    ]


def head_float_ops(op_names: Iterable[str], heads: Iterable[str]) -> list[str]:
    """Ops to keep in float: those of each head's own forward and of its DFL (ONNX/IR names ``/head/...``).

    The head's convolutions (``/head/cv2.0/...``) are quantized; its decode arithmetic (anchors, strides,
    box distances, class sigmoid, concatenations) is not.
    """
    keep = []
    for name in op_names:
        for head in heads:
            prefix = f"/{head}/"
            rest = name[len(prefix) :] if name.startswith(prefix) else None
            if rest is not None and ("/" not in rest or rest.startswith("dfl/")):
                keep.append(name)
                break
    return keep


def _scope(nncf, user: Any, head_ops: list[str]):
    """The user's ignored scope (``nncf.IgnoredScope`` or its keyword dict) plus the head's float ops."""
    if user is None:
        user = nncf.IgnoredScope()
    elif isinstance(user, dict):
        user = nncf.IgnoredScope(**user)
    elif not isinstance(user, nncf.IgnoredScope):
        raise TypeError(
            f"ignored_scope must be an nncf.IgnoredScope or a dict of its fields, not {type(user).__name__}"
        )
    if not head_ops:
        return user
    return nncf.IgnoredScope(
        names=list(user.names) + head_ops,
        patterns=list(user.patterns),
        types=list(user.types),
        subgraphs=list(user.subgraphs),
        validate=False,
    )


@contextlib.contextmanager
def _quiet():
    """NNCF and OpenVINO print progress bars and INFO lines; keep the caller's output readable."""
    logger = logging.getLogger("nncf")
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)


def _export(model: nn.Module, args: tuple, path: Path) -> None:
    try:
        export_onnx(model, args, path, parity=False)
    except Exception as e:  # the exporter raises many types; the user needs to know which step failed
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise ValueError(
            f"the model cannot be captured for quantization: torch.onnx.export failed "
            f"({type(e).__name__}: {first[:300]}); quantization needs a graph NNCF can read (an ONNX "
            "export of the model)"
        ) from e


def _nncf_inputs(backend: str, source: Path, batches: CalibrationBatches) -> tuple[Any, list[str], Any]:
    """The model NNCF quantizes (``ov.Model`` or ``ModelProto``), its op names and the calibration set."""
    nncf = require("nncf")
    names = onnx_input_names(source)
    if backend == "openvino":
        target = require("openvino").convert_model(str(source))
        op_names = [op.get_friendly_name() for op in target.get_ordered_ops()]
        return target, op_names, nncf.Dataset(batches, lambda a: a[0] if len(a) == 1 else list(a))
    target = require("onnx").load(str(source))
    op_names = [n.name for n in target.graph.node]
    return target, op_names, nncf.Dataset(batches, lambda a: dict(zip(names, a)))


def is_quantized(path: str | os.PathLike[str]) -> bool:
    """Whether a model file is quantized: QuantizeLinear nodes in an ONNX file, FakeQuantize ops in an IR."""
    path = Path(path)
    if path.suffix == ".xml":
        return 'type="FakeQuantize"' in path.read_text(errors="ignore")
    graph = require("onnx").load(str(path), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def _count_quantized(backend: str, model: Any) -> int:
    if backend == "openvino":
        return sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    return sum(n.op_type == "QuantizeLinear" for n in model.graph.node)


def quantize(
    model: nn.Module,
    example_inputs: Any,
    calibration: Iterable[Any],
    backend: str = "openvino",
    out: str | os.PathLike[str] | None = None,
    *,
    ignored_scope: Any = None,
    subset_size: int = 300,
    preset: str | None = None,
    transform: Callable[[Any], Any] | None = None,
    keep_head_float: bool = True,
    fast_bias_correction: bool = True,
    requantize_convs: bool = True,
) -> QuantizeResult:
    """Quantize ``model`` to INT8 with NNCF from ``subset_size`` calibration inputs; write it to ``out``.

    ``calibration``: an iterable of batches shaped like ``example_inputs`` (tensors, arrays, tuples or
    dicts; a DataLoader's ``(images, labels)`` keeps the images), or a DataLoader with a ``transform``
    applied to each item. Larger batches are split to the example batch size. ``out`` defaults to a new
    temporary folder. ``ignored_scope``: ``nncf.IgnoredScope`` (or a dict of its fields) kept in float,
    on top of a detection head's decode ops unless ``keep_head_float=False``. ``preset``:
    ``"performance"`` (symmetric) or ``"mixed"``; default mixed for detection models, else performance.
    ``requantize_convs`` (ONNX only): add calibrated Q/DQ pairs where NNCF leaves a quantized convolution's
    output (SiLU follows) or input (a Concat) in float, so that onnxruntime runs every one in INT8; the
    names of those convolutions are ``result.requantized`` (none for ReLU networks, whose file is unchanged);
    where there are some, the Sigmoid of each SiLU or sigmoid gate between them gets a [0, 1] pair too, so
    that onnxruntime runs the gate in INT8 (``QLinearSigmoid``, ``QLinearMul``): their names are
    ``result.gates``; a Softmax over an inner axis is rewritten over the last one (the same values, faster
    on onnxruntime).
    """
    if backend not in BACKENDS:
        raise ValueError(f"unknown quantization backend {backend!r}; choose one of: {', '.join(BACKENDS)}")
    if subset_size < 1:
        raise ValueError(f"subset_size must be >= 1, got {subset_size}")
    if preset not in (None, "performance", "mixed"):
        raise ValueError(f"preset must be 'performance' or 'mixed', not {preset!r}")
    nncf = require("nncf")
    onnx = require("onnx")
    ov = require("openvino") if backend == "openvino" else None
    _scope(nncf, ignored_scope, [])  # a bad ignored_scope fails before any work
    args, kwargs = as_args_kwargs(example_inputs)
    if kwargs:
        raise ValueError("quantization needs positional example inputs (a tensor or a tuple of tensors)")
    batches = CalibrationBatches(calibration, args, transform, forward_input_names(model))
    found = batches.count(subset_size)
    if found < subset_size:
        raise ValueError(
            f"the calibration data gave {found} input batches of shape "
            f"{', '.join(map(str, batches.shapes))}, fewer than subset_size={subset_size}: "
            f"pass more data or subset_size={found}"
        )
    suffix = ".xml" if backend == "openvino" else ".onnx"
    out = (
        Path(out)
        if out is not None
        else Path(tempfile.mkdtemp(prefix="fxprune-int8-")) / f"model-int8{suffix}"
    )
    if out.suffix != suffix:
        raise ValueError(f"backend {backend!r} writes a {suffix} file; got out={out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    source = out.with_name(out.stem + "-fp32.onnx")
    _export(model, tuple(args), source)
    heads = detection_head_names(model) if keep_head_float else []
    target, op_names, data = _nncf_inputs(backend, source, batches)
    head_ops = head_float_ops(op_names, heads)
    chosen = preset or ("mixed" if heads else "performance")
    nncf_preset = nncf.QuantizationPreset.MIXED if chosen == "mixed" else nncf.QuantizationPreset.PERFORMANCE
    scope = _scope(nncf, ignored_scope, head_ops)
    try:
        with _quiet():
            quantized = nncf.quantize(
                target,
                data,
                preset=nncf_preset,
                subset_size=subset_size,
                ignored_scope=scope,
                fast_bias_correction=fast_bias_correction,
            )
    except Exception as e:  # NNCF's own errors name the graph's internals; say which step failed
        raise ValueError(f"NNCF could not quantize the model ({type(e).__name__}: {str(e)[:300]})") from e
    requantized: list[str] = []
    gates: list[str] = []
    if backend == "openvino":
        ov.save_model(quantized, str(out), compress_to_fp16=False)
    else:
        if requantize_convs:
            samples = itertools.islice(batches, subset_size)
            symmetric = chosen == "performance"
            requantized = requantize_conv_outputs(quantized, samples, onnx_input_names(source), symmetric)
            gates = quantize_sigmoid_gates(quantized) if requantized else []
            softmax_on_last_axis(quantized)  # onnxruntime's Softmax over an inner axis is slow (YOLO's DFL)
        onnx.save(quantized, str(out))
    return QuantizeResult(
        out,
        backend,
        source,
        found,
        _count_quantized(backend, quantized),
        time.perf_counter() - start,
        chosen,
        sorted(set(head_ops) | set(scope.names)),
        requantized,
        gates,
    )
