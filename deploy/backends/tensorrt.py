"""TensorRT through its Python API (``backend="trt"``): build an engine from ONNX, time ``execute_async_v3``.

TensorRT 10.x builds weakly typed networks with the FP16 builder flag; 11.x only builds strongly typed
networks, so fp16 there means an fp16 ONNX graph (the model is exported in half precision). INT8 is
explicit quantization on both: a QDQ ONNX (``fxprune.deploy.quantize(..., backend="onnx")``) built as a
strongly typed network, without precision flags (TensorRT's implicit INT8 calibrators are deprecated since
10.1). A timing cache is kept on disk so rebuilding engines of similar shapes is fast.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .base import Backend, BackendUnavailable, Settings
from .cuda_timing import CudaEventRunner, require_cuda
from .registry import register_backend

__all__ = ["TensorRT", "build_engine", "has_qdq", "timing_cache_path"]

INSTALL_HINT = (
    "TensorRT is not installed. Install it from NVIDIA's package index: "
    "pip install --extra-index-url https://pypi.nvidia.com tensorrt "
    "(needs an NVIDIA GPU, driver and a CUDA-enabled torch)"
)


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(INSTALL_HINT) from e
    return trt


def trt_major() -> int:
    """Major version of the installed TensorRT."""
    return int(_trt().__version__.split(".")[0])


def timing_cache_path() -> Path:
    """Where the builder's timing cache lives (``$FXPRUNE_CACHE`` or ``~/.cache/fxprune``)."""
    root = Path(os.environ.get("FXPRUNE_CACHE", Path.home() / ".cache" / "fxprune"))
    return root / "tensorrt" / f"timing-{_trt().__version__}.cache"


def has_qdq(onnx_path: Path) -> bool:
    """Whether the ONNX file holds QuantizeLinear/DequantizeLinear pairs (explicit quantization)."""
    import onnx

    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    return any(n.op_type == "QuantizeLinear" for n in graph.node)


def _network_flags(trt, major: int, precision: str, strongly_typed: bool | None) -> tuple[int, bool]:
    """``create_network`` flags and whether the network is strongly typed, per version and precision."""
    if precision == "int8":
        if strongly_typed is False:
            raise ValueError("INT8 engines are built from QDQ ONNX as strongly typed networks")
        strongly_typed = True
    elif strongly_typed is None:
        strongly_typed = major >= 11
    flags = 0
    if strongly_typed and major < 11:  # 11.x networks are always strongly typed (no flag to pass)
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    return flags, strongly_typed


def build_engine(
    onnx_path: Path,
    precision: str,
    workspace_gib: float = 4.0,
    strongly_typed: bool | None = None,
    input_shapes: list[tuple[int, ...]] | None = None,
):
    """Parse ``onnx_path`` and build a serialized engine; returns ``(engine bytes, strongly_typed)``.

    Inputs with dynamic dimensions get an optimisation profile fixed at ``input_shapes`` (in input order).
    ``precision="int8"`` needs a QDQ ONNX and builds it strongly typed with no precision flag.
    """
    trt = _trt()
    if precision == "int8" and not has_qdq(onnx_path):
        raise ValueError(
            f"{onnx_path} has no QuantizeLinear/DequantizeLinear nodes: TensorRT INT8 needs a QDQ ONNX "
            "(fxprune.deploy.quantize(model, inputs, calibration, backend='onnx'))"
        )
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    major = int(trt.__version__.split(".")[0])
    flags, strongly_typed = _network_flags(trt, major, precision, strongly_typed)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    _fix_dynamic_shapes(builder, network, config, input_shapes or [])
    if precision == "fp16" and not strongly_typed:
        config.set_flag(trt.BuilderFlag.FP16)
    cache_file = timing_cache_path()
    cache = config.create_timing_cache(cache_file.read_bytes() if cache_file.exists() else b"")
    config.set_timing_cache(cache, ignore_mismatch=True)
    engine = builder.build_serialized_network(network, config)
    if engine is None:
        raise RuntimeError(f"TensorRT failed to build an engine from {onnx_path}")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    cache_file.write_bytes(memoryview(config.get_timing_cache().serialize()))
    return engine, strongly_typed


def _fix_dynamic_shapes(builder, network, config, shapes: list[tuple[int, ...]]) -> None:
    inputs = [network.get_input(i) for i in range(network.num_inputs)]
    dynamic = [(t, s) for t, s in zip(inputs, shapes) if any(d < 0 for d in tuple(t.shape))]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for tensor, shape in dynamic:
        profile.set_shape(tensor.name, shape, shape, shape)
    config.add_optimization_profile(profile)


def _torch_dtype(trt, dtype) -> torch.dtype:
    table = {
        trt.float32: torch.float32,
        trt.float16: torch.float16,
        trt.int32: torch.int32,
        trt.bool: torch.bool,
    }
    if hasattr(trt, "int64"):
        table[trt.int64] = torch.int64
    if hasattr(trt, "bfloat16"):
        table[trt.bfloat16] = torch.bfloat16
    return table[dtype]


@register_backend
class TensorRT(Backend):
    name = "trt"
    device = "cuda"
    precisions = ("fp32", "fp16", "int8")
    int8_format = "onnx"
    requantize_convs = False  # TensorRT rejects uint8 activations
    description = "TensorRT engine built from ONNX, execute_async_v3 timed with CUDA events"

    def check(self) -> None:
        _trt()
        require_cuda(f"backend {self.name!r}")

    def export_dtype(self, precision: str) -> torch.dtype:
        return torch.float16 if precision == "fp16" and trt_major() >= 11 else torch.float32

    def load(self, source: Path, inputs: tuple[torch.Tensor, ...], settings: Settings) -> CudaEventRunner:
        trt = _trt()
        shapes = [tuple(t.shape) for t in inputs]
        serialized, _ = build_engine(Path(source), settings.precision, input_shapes=shapes)
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        engine = runtime.deserialize_cuda_engine(serialized)
        context = engine.create_execution_context()
        dev = torch.device("cuda", settings.device_index)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        in_names = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if len(in_names) != len(inputs):
            raise ValueError(f"the engine has {len(in_names)} inputs, {len(inputs)} were given")
        buffers: dict[str, torch.Tensor] = {}
        for name, x in zip(in_names, inputs):
            buffers[name] = x.to(dev, _torch_dtype(trt, engine.get_tensor_dtype(name))).contiguous()
            context.set_input_shape(name, tuple(x.shape))
        for name in names:
            if name not in buffers:
                shape = tuple(context.get_tensor_shape(name))
                buffers[name] = torch.empty(
                    shape, dtype=_torch_dtype(trt, engine.get_tensor_dtype(name)), device=dev
                )
            context.set_tensor_address(name, buffers[name].data_ptr())
        stream = torch.cuda.Stream(dev)

        def launch() -> None:
            if not context.execute_async_v3(stream.cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed")

        for _ in range(3):
            launch()
        stream.synchronize()
        runner = CudaEventRunner(launch, stream, settings.device_index, graphs=settings.cuda_graphs)
        runner.keep = (runtime, engine, context, buffers)  # keep everything alive as long as the runner
        return runner
