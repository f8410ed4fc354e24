"""Calibrated quantizers on convolution outputs, so that onnxruntime runs a QDQ model's convolutions in INT8.

onnxruntime replaces ``DequantizeLinear -> Conv -> QuantizeLinear`` by its INT8 kernel (``QLinearConv``;
a ``Relu`` or ``Clip`` between Conv and Q is folded) only when the convolution's output is requantized.
NNCF places quantizers the way OpenVINO fuses: after a convolution's activation. For SiLU
(``Sigmoid`` and ``Mul``), and any other activation onnxruntime does not fold, no quantizer sits on the
convolution's output, and onnxruntime runs that convolution in fp32 between ``DequantizeLinear`` nodes.

:func:`requantize_conv_outputs` adds a ``QuantizeLinear``/``DequantizeLinear`` pair (standard ops, per-tensor
scale) on each such output, with its range measured on the calibration inputs the way NNCF measures
per-tensor activations (mean over samples of each sample's minimum and maximum). Symmetric pairs (zero
point 0) are what TensorRT's explicit quantization accepts; asymmetric ones follow NNCF's mixed preset.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

__all__ = [
    "FOLDED_ACTIVATIONS",
    "PASS_THROUGH",
    "activation_ranges",
    "activations_to_uint8",
    "quantize_sigmoid_gates",
    "requantize_conv_outputs",
    "softmax_on_last_axis",
    "unquantized_conv_tensors",
]

FOLDED_ACTIVATIONS = ("Relu", "Clip")  # activations onnxruntime folds between a Conv and its QuantizeLinear
# DequantizeLinear moves across them (onnxruntime's QDQ propagation; MaxPool then runs on quantized values)
PASS_THROUGH = ("Slice", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "MaxPool")


def _consumers(graph) -> dict[str, list]:
    out: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            out.setdefault(name, []).append(node)
    return out


def _requantized(tensor: str, consumers: dict[str, list], outputs: set[str]) -> bool:
    """Whether ``tensor`` (a Conv output) reaches a QuantizeLinear directly or through one folded activation,
    and nothing else reads it."""
    users = consumers.get(tensor, [])
    if tensor in outputs or len(users) != 1:
        return False
    user = users[0]
    if user.op_type == "QuantizeLinear":
        return True
    return user.op_type in FOLDED_ACTIVATIONS and _requantized(user.output[0], consumers, outputs)


def _dequantized(name: str, producers: dict) -> bool:
    """Whether ``name`` comes from a DequantizeLinear, directly or through ops onnxruntime moves it across
    (a convolution reading a MaxPool of a dequantized tensor, as in ResNet's stem, needs no pair of its own:
    one would keep the MaxPool in float between layout conversions)."""
    node = producers.get(name)
    while node is not None and node.op_type in PASS_THROUGH:
        node = producers.get(node.input[0])
    return node is not None and node.op_type == "DequantizeLinear"


def unquantized_conv_tensors(model) -> tuple[list, list]:
    """Among the Conv nodes whose weight is dequantized (those NNCF quantized): those whose input is not
    dequantized (a Concat of quantized branches) and those whose output no QuantizeLinear requantizes
    (a graph output included). onnxruntime runs both kinds in fp32."""
    graph = model.graph
    producers = {o: n for n in graph.node for o in n.output}
    consumers = _consumers(graph)
    outputs = {o.name for o in graph.output}
    convs = [
        n
        for n in graph.node
        if n.op_type == "Conv"
        and len(n.input) >= 2
        and getattr(producers.get(n.input[1]), "op_type", None) == "DequantizeLinear"
    ]
    inputs = [n for n in convs if not _dequantized(n.input[0], producers)]
    outs = [n for n in convs if not _requantized(n.output[0], consumers, outputs)]
    return inputs, outs


def activation_ranges(
    model, tensors: Sequence[str], batches: Iterable[Sequence[np.ndarray]], input_names: Sequence[str]
) -> dict[str, tuple[float, float]]:
    """Mean over ``batches`` of each tensor's per-sample minimum and maximum (onnxruntime, one thread)."""
    import onnx
    import onnxruntime as ort

    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    known = {o.name for o in probe.graph.output}
    for name in tensors:
        if name not in known:
            probe.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads, opts.log_severity_level = 1, 1, 3
    session = ort.InferenceSession(probe.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    lows: dict[str, list[float]] = {t: [] for t in tensors}
    highs: dict[str, list[float]] = {t: [] for t in tensors}
    for batch in batches:
        for name, value in zip(tensors, session.run(list(tensors), dict(zip(input_names, batch)))):
            lows[name].append(float(value.min()))
            highs[name].append(float(value.max()))
    if not tensors or not lows[tensors[0]]:
        return {}
    return {t: (float(np.mean(lows[t])), float(np.mean(highs[t]))) for t in tensors}


def _scale_zero_point(
    low: float, high: float, symmetric: bool, unsigned: bool
) -> tuple[np.ndarray, np.ndarray]:
    """Scale and zero point (int8, or uint8 when ``unsigned``) covering ``[low, high]`` and 0."""
    low, high = min(low, 0.0), max(high, 0.0)
    if symmetric:
        scale, zero = max(max(-low, high) / 127.0, 1e-8), 0
    else:
        scale = max((high - low) / 255.0, 1e-8)
        zero = int(np.clip(round(-128 - low / scale), -128, 127))
    dtype = np.uint8 if unsigned else np.int8
    return np.array(scale, dtype=np.float32), np.array(zero + 128 if unsigned else zero, dtype=dtype)


class _Pairs:
    """Q/DQ pairs to add to a graph: initializers now, nodes placed before their first reader at the end."""

    def __init__(self, graph, symmetric: bool, unsigned: bool) -> None:
        self.graph, self.symmetric, self.unsigned = graph, symmetric, unsigned
        self.before: dict[str, list] = {}  # name of the node reading the pair's output -> the pair's nodes
        self.after: dict[str, list] = {}  # name of the tensor quantized -> the pair's nodes

    def make(self, tensor: str, value_range: tuple[float, float], tag: str) -> tuple[list, str]:
        from onnx import helper, numpy_helper

        scale, zero = _scale_zero_point(*value_range, self.symmetric, self.unsigned)
        base = f"{tensor}_{tag}"
        self.graph.initializer.extend(
            [
                numpy_helper.from_array(scale, f"{base}_scale"),
                numpy_helper.from_array(zero, f"{base}_zero_point"),
            ]
        )
        params = [f"{base}_scale", f"{base}_zero_point"]
        nodes = [
            helper.make_node(
                "QuantizeLinear", [tensor, *params], [f"{base}_q"], name=f"{base}/QuantizeLinear"
            ),
            helper.make_node(
                "DequantizeLinear", [f"{base}_q", *params], [f"{base}_dq"], name=f"{base}/DequantizeLinear"
            ),
        ]
        return nodes, f"{base}_dq"

    def place(self) -> None:
        """Rewrite the node list in topological order with the pairs in it."""
        nodes = []
        for node in self.graph.node:
            nodes.extend(self.before.get(node.output[0], []))
            nodes.append(node)
            for name in node.output:
                nodes.extend(self.after.get(name, []))
        del self.graph.node[:]
        self.graph.node.extend(nodes)


def activations_to_uint8(model) -> int:
    """Rewrite every int8 QuantizeLinear (and the DequantizeLinear nodes reading it) as uint8 with the zero
    point shifted by 128, in place: the same values, in the type onnxruntime's x86 INT8 convolutions take
    (it converts int8 pairs itself only where a pair's DequantizeLinear has one reader). Weights (constant
    int8 tensors behind a lone DequantizeLinear) stay int8. Returns the number of quantizers rewritten."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    declared = {v.name: v for v in [*graph.value_info, *graph.output]}
    consumers = _consumers(graph)
    shifted: dict[str, str] = {}
    count = 0
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or len(node.input) < 3 or node.input[2] not in inits:
            continue
        zero = numpy_helper.to_array(inits[node.input[2]])
        if zero.dtype != np.int8:
            continue
        name = node.input[2]
        if name not in shifted:
            shifted[name] = f"{name}_uint8"
            graph.initializer.append(
                numpy_helper.from_array((zero.astype(np.int16) + 128).astype(np.uint8), shifted[name])
            )
        node.input[2] = shifted[name]
        if node.output[0] in declared:  # the declared type of the quantized tensor changes with it
            declared[node.output[0]].type.tensor_type.elem_type = TensorProto.UINT8
        for reader in consumers.get(node.output[0], []):
            if reader.op_type == "DequantizeLinear" and len(reader.input) >= 3:
                reader.input[2] = shifted[name]
        count += 1
    return count


def _sigmoid_gates(graph, consumers: dict[str, list]) -> list:
    """Sigmoid nodes of a gate ``Mul(x, Sigmoid(x'))`` (SiLU: ``x' = x``) with every input dequantized and
    every output requantized, but the Sigmoid's own output in float: the pattern onnxruntime would run as
    ``QLinearSigmoid`` and ``QLinearMul`` if that output had a Q/DQ pair too. ``consumers``: the readers
    of every tensor (:func:`_consumers` of ``graph``)."""
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}

    def dequantized(name: str) -> bool:
        return getattr(producers.get(name), "op_type", None) == "DequantizeLinear"

    def gate(mul, sigmoid_out: str) -> bool:
        others = [name for name in mul.input if name != sigmoid_out]
        users = consumers.get(mul.output[0], [])
        return (
            mul.op_type == "Mul"
            and len(others) == 1
            and dequantized(others[0])
            and mul.output[0] not in outputs
            and bool(users)
            and all(u.op_type == "QuantizeLinear" for u in users)
        )

    found = []
    for node in graph.node:
        if node.op_type != "Sigmoid" or not dequantized(node.input[0]) or node.output[0] in outputs:
            continue
        users = consumers.get(node.output[0], [])
        if users and all(gate(u, node.output[0]) for u in users):
            found.append(node)
    return found


def quantize_sigmoid_gates(model, symmetric: bool = False, unsigned: bool = True) -> list[str]:
    """Add a Q/DQ pair, in place, on the output of every Sigmoid :func:`_sigmoid_gates` finds (SiLU and
    sigmoid gates between quantized tensors), so that onnxruntime's QDQ fusions run the Sigmoid as
    ``QLinearSigmoid`` and the Mul as ``QLinearMul`` instead of dequantizing, computing in float and
    quantizing again. The range is the Sigmoid's own, [0, 1]: no calibration (uint8, zero point 0, by default:
    the type :func:`requantize_conv_outputs` gives the other activations). Returns the Sigmoids' names."""
    graph = model.graph
    consumers = _consumers(graph)
    gates = _sigmoid_gates(graph, consumers)
    if not gates:
        return []
    pairs = _Pairs(graph, symmetric, unsigned)
    for node in gates:
        tensor = node.output[0]
        pairs.after[tensor], dq = pairs.make(tensor, (0.0, 1.0), "gate")
        for user in consumers.get(tensor, []):
            user.input[:] = [dq if name == tensor else name for name in user.input]
    pairs.place()
    import onnx

    onnx.checker.check_model(model)
    return [n.name or n.output[0] for n in gates]


def requantize_conv_outputs(
    model,
    batches: Iterable[Sequence[np.ndarray]],
    input_names: Sequence[str],
    symmetric: bool = True,
    unsigned: bool = True,
) -> list[str]:
    """Add calibrated QuantizeLinear/DequantizeLinear pairs, in place, on the tensors
    :func:`unquantized_conv_tensors` finds (each Conv's input gets its own pair; an output's pair is read by
    every reader of the output); return the names of the Conv nodes changed. Ranges come from ``batches``
    (model inputs, in ``input_names`` order) run through ``model`` itself. With ``unsigned`` (what
    onnxruntime's x86 kernels need) the new pairs and every other int8 activation pair are written as uint8
    (:func:`activations_to_uint8`); TensorRT takes int8 pairs with zero points 0 only."""
    import onnx

    inputs, outputs = unquantized_conv_tensors(model)
    if not inputs and not outputs:
        return []
    tensors = sorted({c.input[0] for c in inputs} | {c.output[0] for c in outputs})
    ranges = activation_ranges(model, tensors, batches, input_names)
    if not ranges:
        raise ValueError("no calibration batch reached the model: cannot measure the convolution tensors")
    graph = model.graph
    consumers = _consumers(graph)
    pairs = _Pairs(graph, symmetric, unsigned)
    graph_outputs = {o.name for o in graph.output}
    for conv in outputs:
        tensor = conv.output[0]
        if tensor in graph_outputs:  # the pair's DequantizeLinear writes the graph output
            conv.output[0] = f"{tensor}_float"
            nodes, _ = pairs.make(conv.output[0], ranges[tensor], "requant")
            nodes[1].output[0] = tensor
            pairs.after[conv.output[0]] = nodes
            continue
        pairs.after[tensor], dq = pairs.make(tensor, ranges[tensor], "requant")
        for user in consumers.get(tensor, []):
            user.input[:] = [dq if name == tensor else name for name in user.input]
    for conv in inputs:
        tensor = conv.input[0]
        pairs.before[conv.output[0]], conv.input[0] = pairs.make(
            tensor, ranges[tensor], f"{conv.output[0]}_in"
        )
    pairs.place()
    if unsigned:
        activations_to_uint8(model)
    onnx.checker.check_model(model)
    return sorted({c.name or c.output[0] for c in [*inputs, *outputs]})


def softmax_on_last_axis(model) -> list[str]:
    """Rewrite, in place, every Softmax over an axis other than the last as ``Transpose -> Softmax(last axis)
    -> Transpose`` (the same values: the permutation swaps that axis with the last). onnxruntime's CPU
    Softmax over an inner axis is several times slower than this form: YOLO's DFL (a softmax over 16 bins
    of every one of 8400 anchors) takes 5 ms either side of pruning at 640 px, one thread. Needs opset >= 13
    (older Softmax flattens from ``axis``); returns the names of the Softmax nodes rewritten."""
    import onnx
    from onnx import helper

    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    if opset < 13:
        return []
    inferred = onnx.shape_inference.infer_shapes(model)
    ranks = {
        v.name: len(v.type.tensor_type.shape.dim)
        for v in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]
        if v.type.tensor_type.HasField("shape")
    }
    rewritten, nodes = [], []
    for node in model.graph.node:
        rank = ranks.get(node.input[0]) if node.op_type == "Softmax" else None
        axis = next((a.i for a in node.attribute if a.name == "axis"), -1)
        if not rank or axis % rank == rank - 1:
            nodes.append(node)
            continue
        perm = list(range(rank))
        perm[axis % rank], perm[-1] = rank - 1, axis % rank
        base = node.name or node.output[0]
        nodes += [
            helper.make_node("Transpose", [node.input[0]], [f"{base}_in_last"], f"{base}/to_last", perm=perm),
            helper.make_node("Softmax", [f"{base}_in_last"], [f"{base}_last"], base, axis=-1),
            helper.make_node("Transpose", [f"{base}_last"], [node.output[0]], f"{base}/from_last", perm=perm),
        ]
        rewritten.append(base)
    if rewritten:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        onnx.checker.check_model(model)
    return rewritten
