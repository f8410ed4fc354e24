"""One-layer model files that latency tables time: a conv or linear layer (optionally with the SiLU
that follows it) written straight as ONNX, as a QDQ INT8 ONNX file, or as an OpenVINO IR, without an
export or an NNCF run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

__all__ = ["write_layer_onnx", "write_layer_openvino_ir", "write_layer_qdq_onnx"]


def _split(module: nn.Module) -> tuple[nn.Module, bool]:
    """The conv/linear layer of ``module`` and whether SiLU follows it (``Sequential(conv, SiLU())``)."""
    if isinstance(module, nn.Sequential):
        return module[0], len(module) > 1 and isinstance(module[1], nn.SiLU)
    return module, False


def _silu_nodes(src: str, dst: str, gate: str | None = None) -> list:
    """``dst = src * Sigmoid(src)`` as ONNX nodes; with ``gate`` the Sigmoid's output goes through the uint8
    Q/DQ pair of that name (range [0, 1], as :func:`fxprune.deploy.qdq.quantize_sigmoid_gates` writes it)."""
    from onnx import helper

    nodes = [helper.make_node("Sigmoid", [src], [f"{src}_sigmoid"])]
    sig = f"{src}_sigmoid"
    if gate is not None:
        params = [f"{gate}_scale", f"{gate}_zp"]
        nodes += [helper.make_node("QuantizeLinear", [sig, *params], [f"{gate}_q"]),
                  helper.make_node("DequantizeLinear", [f"{gate}_q", *params], [f"{gate}_dq"])]  # fmt: skip
        sig = f"{gate}_dq"
    return nodes + [helper.make_node("Mul", [src, sig], [dst])]


def write_layer_onnx(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """``module`` as a one-node ONNX file (``Conv`` or ``Gemm``, fp32, opset 17): what
    ``torch.onnx.export`` writes for a single layer, without the cost of tracing it. A conv followed by
    SiLU (``nn.Sequential(conv, nn.SiLU())``) gets ``Sigmoid`` and ``Mul`` after it, as exported."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    with torch.no_grad():
        out_shape = list(module(x).shape)
    module, silu = _split(module)
    weights = [numpy_helper.from_array(module.weight.detach().numpy(), "weight")]
    if module.bias is not None:
        weights.append(numpy_helper.from_array(module.bias.detach().numpy(), "bias"))
    names = ["input", *(w.name for w in weights)]
    if isinstance(module, nn.Linear):
        node = helper.make_node("Gemm", names, ["output0"], transB=1)
    else:
        (ph, pw), kernel = module.padding, list(module.kernel_size)
        attrs = dict(strides=list(module.stride), dilations=list(module.dilation), group=module.groups)
        node = helper.make_node(
            "Conv", names, ["conv_out" if silu else "output0"], kernel_shape=kernel, pads=[ph, pw, ph, pw],
            **attrs,
        )  # fmt: skip
    graph = helper.make_graph(
        [node, *(_silu_nodes("conv_out", "output0") if silu else [])],
        "layer",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, list(x.shape))],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, out_shape)],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _qdq_pair(name: str, values: np.ndarray, inits: list) -> list:
    """A uint8 QuantizeLinear/DequantizeLinear pair (symmetric range, zero point 128) from ``name`` to
    ``name + "_dq"``, as :func:`fxprune.deploy.quantize` writes activations for onnxruntime."""
    from onnx import helper, numpy_helper

    scale = np.float32(max(float(np.abs(values).max()), 1e-6) / 127.0)
    inits += [numpy_helper.from_array(np.array(scale), f"{name}_scale"),
              numpy_helper.from_array(np.array(128, dtype=np.uint8), f"{name}_zp")]  # fmt: skip
    params = [f"{name}_scale", f"{name}_zp"]
    return [
        helper.make_node("QuantizeLinear", [name, *params], [f"{name}_q"]),
        helper.make_node("DequantizeLinear", [f"{name}_q", *params], [f"{name}_dq"]),
    ]


def write_layer_qdq_onnx(module: nn.Module, x: torch.Tensor, path: Path, act_pairs: bool = True) -> Path:
    """``module`` as a one-layer INT8 QDQ ONNX file laid out as :func:`fxprune.deploy.quantize` writes a
    quantized layer for onnxruntime: the input and the output through uint8 Q/DQ pairs (per tensor), the
    weight int8 per output channel (symmetric) behind a DequantizeLinear, the bias in float. Written
    directly, without an export or an NNCF run (seconds per layer): what INT8 layer tables time.

    A conv followed by SiLU (``nn.Sequential(conv, nn.SiLU())``) is written as deployed: with ``act_pairs``
    (onnxruntime's file) the conv's output is requantized and the Sigmoid's output gets its [0, 1] pair,
    so onnxruntime runs ``QLinearConv``, ``QLinearSigmoid`` and ``QLinearMul``; without (the fused form
    OpenVINO runs, SiLU a post-op of the INT8 conv) ``Sigmoid`` and ``Mul`` follow the conv in float and
    only their output is quantized."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    conv, silu = _split(module)
    write_layer_onnx(conv, x, path)
    model = onnx.load(str(path))
    graph = model.graph
    with torch.no_grad():
        y = conv(x)
        y_act = torch.nn.functional.silu(y).numpy()
        y = y.numpy()
    weight = conv.weight.detach().numpy()
    flat = np.abs(weight.reshape(weight.shape[0], -1)).max(1)
    w_scale = (np.maximum(flat, 1e-8) / 127.0).astype(np.float32)
    shape = (-1,) + (1,) * (weight.ndim - 1)
    w_int8 = np.clip(np.round(weight / w_scale.reshape(shape)), -127, 127).astype(np.int8)
    inits = [i for i in graph.initializer if i.name != "weight"]
    inits += [numpy_helper.from_array(w_int8, "weight_q"), numpy_helper.from_array(w_scale, "weight_scale"),
              numpy_helper.from_array(np.zeros(len(w_scale), np.int8), "weight_zp")]  # fmt: skip
    layer = graph.node[0]
    layer.input[0], layer.input[1], layer.output[0] = "input_dq", "weight_dq", "output_float"
    nodes = _qdq_pair("input", x.numpy(), inits)
    nodes.append(
        helper.make_node("DequantizeLinear", ["weight_q", "weight_scale", "weight_zp"], ["weight_dq"], axis=0)
    )
    nodes.append(layer)
    last, last_values = "output_float", y
    if silu and act_pairs:
        nodes += _qdq_pair("output_float", y, inits)
        inits += [numpy_helper.from_array(np.array(1.0 / 255.0, np.float32), "gate_scale"),
                  numpy_helper.from_array(np.array(0, dtype=np.uint8), "gate_zp")]  # fmt: skip
        nodes += _silu_nodes("output_float_dq", "act_out", gate="gate")
        last, last_values = "act_out", y_act
    elif silu:
        nodes += _silu_nodes("output_float", "act_out")
        last, last_values = "act_out", y_act
    out = _qdq_pair(last, last_values, inits)
    out[1].output[0] = "output0"
    del graph.node[:], graph.initializer[:]
    graph.node.extend(nodes + out)
    graph.initializer.extend(inits)
    graph.output[0].type.tensor_type.elem_type = TensorProto.FLOAT
    onnx.save(model, str(path))
    return path


def write_layer_openvino_ir(module: nn.Module, x: torch.Tensor, path: Path) -> Path:
    """The fused form of :func:`write_layer_qdq_onnx` as an OpenVINO IR (``path`` as ``.xml``), with the
    conversion's own graph passes applied (those of ``ov.convert_model``): ``Sigmoid`` and ``Mul`` become
    ``Swish``, as in the IR that :func:`fxprune.deploy.quantize` writes, and the CPU plugin then runs SiLU
    and the output's quantization as post-ops of the INT8 conv (read from the ONNX file they stay a
    separate elementwise subgraph)."""
    import openvino as ov

    onnx_path = write_layer_qdq_onnx(module, x, path.with_suffix(".qdq.onnx"), act_pairs=False)
    try:  # the passes alone: a third of convert_model's time per layer
        from openvino._offline_transformations import apply_moc_transformations

        model = ov.Core().read_model(str(onnx_path))
        apply_moc_transformations(model, cf=False)
    except ImportError:
        model = ov.convert_model(str(onnx_path))
    xml = path.with_suffix(".xml")
    ov.save_model(model, str(xml), compress_to_fp16=False)
    return xml
