"""Model latency as a function of channel-group widths: a sum of per-layer lookup-table latencies."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from fxprune.analysis import Analysis
from fxprune.capture import run_model
from fxprune.plan import removal_rank
from fxprune.threads import one_thread

from .lut import LatencyTable, LayerShape

__all__ = ["LatencyModel", "LayerUse"]

FRACTIONS = (0.25, 0.5, 0.75, 1.0)


def _pair(v: Any) -> tuple[int, int]:
    return (int(v[0]), int(v[1])) if isinstance(v, (tuple, list)) else (int(v), int(v))


@dataclass
class LayerUse:
    """One call of a conv/linear layer: its dense shape and the groups its input/output channels belong to.

    ``in_ranks``/``out_ranks``: sorted removal ranks of the atoms behind the layer's channels (the group's
    prunable atoms in increasing importance), so ``n`` atoms removed from the group take
    ``searchsorted(ranks, n)`` channels from the layer.
    """

    name: str
    shape: LayerShape
    in_group: int | None = None
    out_group: int | None = None
    in_ranks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    out_ranks: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_in: np.ndarray = field(default_factory=lambda: np.zeros(0))
    grid_out: np.ndarray = field(default_factory=lambda: np.zeros(0))
    costs: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # [len(grid_out), len(grid_in)]

    def grid_shapes(self) -> list[LayerShape]:
        return [
            self.shape.with_channels(int(ci), int(co)) for co in self.grid_out[1:] for ci in self.grid_in[1:]
        ]

    def cost(self, cin: int, cout: int) -> float:
        """Bilinear interpolation in the measured grid (a layer with no channels costs nothing)."""
        j = int(np.clip(np.searchsorted(self.grid_in, cin, side="right") - 1, 0, len(self.grid_in) - 2))
        lo, hi = self.grid_in[j], self.grid_in[j + 1]
        t = min(max((cin - lo) / (hi - lo), 0.0), 1.0)
        column = self.costs[:, j] * (1.0 - t) + self.costs[:, j + 1] * t  # every row at cin
        return float(np.interp(cout, self.grid_out, column))


def _grid(size: int, q: int, prunable: bool) -> np.ndarray:
    if not prunable:
        return np.array([0, size])
    pts = {min(size, max(q, int(math.ceil(f * size / q)) * q)) for f in FRACTIONS}
    return np.array([0, *sorted(pts | {size, min(q, size)})])  # the narrowest aligned width is measured


def _record_calls(
    model: nn.Module, example_inputs: Any
) -> tuple[list[tuple[str, nn.Module, tuple[int, ...]]], set[int]]:
    """Every conv/linear call (name, module, input shape), and the indices of the conv calls whose output
    reaches an ``nn.SiLU`` directly or through one batch norm (folded into the conv when deployed)."""
    calls: list[tuple[str, nn.Module, tuple[int, ...]]] = []
    produced: dict[int, tuple[int, torch.Tensor]] = {}  # id(tensor) -> (conv call, the tensor kept alive)
    activated: set[int] = set()

    def conv_out(mod, args, out) -> None:
        if isinstance(mod, nn.Conv2d) and isinstance(out, torch.Tensor):
            produced[id(out)] = (len(calls) - 1, out)

    def norm_out(mod, args, out) -> None:
        src = produced.get(id(args[0])) if args else None
        if src is not None and src[1] is args[0] and isinstance(out, torch.Tensor):
            produced[id(out)] = (src[0], out)

    def act_in(mod, args) -> None:
        src = produced.get(id(args[0])) if args else None
        if src is not None and src[1] is args[0]:
            activated.add(src[0])

    hooks = []
    for name, m in model.named_modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            hooks.append(
                m.register_forward_pre_hook(lambda mod, a, n=name: calls.append((n, mod, a[0].shape)))
            )
            hooks.append(m.register_forward_hook(conv_out))
        elif isinstance(m, nn.BatchNorm2d):
            hooks.append(m.register_forward_hook(norm_out))
        elif isinstance(m, nn.SiLU):
            hooks.append(m.register_forward_pre_hook(act_in))
    was_training = model.training
    try:
        with torch.no_grad(), one_thread():
            run_model(model.eval(), example_inputs)
    finally:
        model.train(was_training)  # a model analysed inside a training loop keeps training
        for h in hooks:
            h.remove()
    return calls, activated


def _shape_of(module: nn.Module, in_shape: tuple[int, ...]) -> LayerShape | None:
    if isinstance(module, nn.Linear):
        tokens = int(np.prod(in_shape[:-1])) if len(in_shape) > 1 else 1
        return LayerShape(
            "linear", module.in_features, module.out_features, tokens, bias=module.bias is not None
        )
    if len(in_shape) != 4 or module.padding_mode != "zeros" or isinstance(module.padding, str):
        return None
    return LayerShape(
        "conv",
        module.in_channels,
        module.out_channels,
        int(in_shape[2]),
        int(in_shape[3]),
        int(in_shape[0]),
        _pair(module.kernel_size),
        _pair(module.stride),
        _pair(module.padding),
        _pair(module.dilation),
        module.groups,
        module.bias is not None,
    )


class LatencyModel:
    """Estimated latency (ms, backend's own layer latencies summed) given atoms removed per group.

    ``estimate(counts)`` sums every conv/linear call's interpolated table latency when ``counts[gid]``
    atoms are removed from group ``gid``. Ratios of estimates predict latency ratios; other ops
    (activations, additions, pooling) are assumed to scale like the layers around them.
    """

    def __init__(self, layers: list[LayerUse]) -> None:
        self.layers = layers
        self.by_group: dict[int, list[int]] = {}
        for i, layer in enumerate(layers):
            for gid in {layer.in_group, layer.out_group} - {None}:
                self.by_group.setdefault(gid, []).append(i)
        self._dense = self.estimate({})

    @classmethod
    def build(
        cls,
        analysis: Analysis,
        example_inputs: Any,
        table: LatencyTable,
        round_to: int = 1,
        progress: Callable[[int, int], None] | None = None,
        scores: dict[int, np.ndarray] | None = None,
        activations: bool = False,
    ) -> LatencyModel:
        """Find every conv/linear call of the model; measure missing grid points into ``table``.

        ``scores`` (default: ``analysis.scores()``) give the order in which each group loses atoms. With
        ``activations``, a conv whose output goes through SiLU (directly or through a batch norm, which
        deployment folds into the conv's bias) is timed with its SiLU as one unit (``LayerShape.act``): the
        elementwise work that shrinks with the output channels, and on onnxruntime the Q/DQ between them.
        """
        scores = analysis.scores() if scores is None else scores
        owner: dict[tuple[str, int], tuple[int, bool]] = {}
        ranks: dict[tuple[str, int], np.ndarray] = {}
        for g in analysis.groups:
            rank = removal_rank(g, scores[g.id])
            for b in g.blocks:
                atoms = np.asarray(g.block_atom_index[b.base])
                block_ranks = np.sort(rank[atoms[atoms >= 0]])
                for pname, dim in b.members:
                    owner[(pname, dim)] = (g.id, g.prunable > 0)
                    ranks[(pname, dim)] = block_ranks
        layers = []
        calls, activated = _record_calls(analysis.model, example_inputs)
        for index, (name, module, in_shape) in enumerate(calls):
            shape = _shape_of(module, tuple(in_shape))
            if shape is None:
                continue
            if activations and index in activated:
                shape = replace(shape, act="silu", bias=True)
            out_g, out_p = owner.get((f"{name}.weight", 0), (None, False))
            in_g, in_p = owner.get((f"{name}.weight", 1), (None, False))
            grouped = shape.kind == "conv" and shape.groups > 1
            if grouped and not shape.depthwise:
                out_p = in_p = False  # grouped (not depthwise) convs: fixed cost
            if shape.depthwise:
                in_g, in_p = None, False
            q = max(round_to, 1)
            grid_out = _grid(shape.cout, q, out_p)
            grid_in = grid_out if shape.depthwise else _grid(shape.cin, q, in_p)
            empty = np.zeros(0)
            layers.append(
                LayerUse(
                    name,
                    shape,
                    in_g if in_p else None,
                    out_g if out_p else None,
                    ranks.get((f"{name}.weight", 1), empty),
                    ranks.get((f"{name}.weight", 0), empty),
                    grid_in,
                    grid_out,
                )
            )
        todo = [
            s
            for layer in layers
            for s in (_diagonal(layer) if layer.shape.depthwise else layer.grid_shapes())
        ]
        table.ensure(todo, progress=progress)
        for layer in layers:
            layer.costs = _costs(layer, table)
        return cls(layers)

    def channels(self, layer: LayerUse, counts: dict[int, int]) -> tuple[int, int]:
        """Input and output channels of ``layer`` once ``counts`` atoms are removed from each group."""
        cout = _left(layer.shape.cout, layer.out_ranks, counts.get(layer.out_group, 0))
        if layer.shape.depthwise:
            return cout, cout
        cin = _left(layer.shape.cin, layer.in_ranks, counts.get(layer.in_group, 0))
        return cin, cout

    def layer_cost(self, index: int, counts: dict[int, int]) -> float:
        layer = self.layers[index]
        cin, cout = self.channels(layer, counts)
        if layer.shape.depthwise:
            return float(np.interp(cout, layer.grid_out, layer.costs[:, -1]))
        return layer.cost(cin, cout)

    def layer_macs(self, index: int, counts: dict[int, int]) -> int:
        """Multiply-accumulates of one layer call once ``counts`` atoms are removed from each group."""
        layer = self.layers[index]
        s = layer.shape
        cin, cout = self.channels(layer, counts)
        if s.kind == "linear":
            return s.h * cin * cout
        out_hw = [
            (size + 2 * p - d * (k - 1) - 1) // st + 1
            for size, p, d, k, st in zip((s.h, s.w), s.padding, s.dilation, s.kernel, s.stride)
        ]
        per_output = s.kernel[0] * s.kernel[1] * (1 if s.depthwise else cin // max(s.groups, 1))
        return s.batch * cout * out_hw[0] * out_hw[1] * per_output

    def group_macs(self, gid: int, counts: dict[int, int]) -> int:
        """Multiply-accumulates of the layers that group ``gid`` touches."""
        return sum(self.layer_macs(i, counts) for i in self.by_group.get(gid, ()))

    def estimate(self, counts: dict[int, int]) -> float:
        """Estimated latency (ms) with ``counts[gid]`` atoms removed from each group."""
        return sum(self.layer_cost(i, counts) for i in range(len(self.layers)))

    @property
    def dense(self) -> float:
        return self._dense

    def ratio(self, counts: dict[int, int]) -> float:
        """Estimated latency relative to the dense model."""
        return self.estimate(counts) / max(self._dense, 1e-12)

    def group_cost(self, gid: int, counts: dict[int, int]) -> float:
        """Latency of the layers that group ``gid`` touches."""
        return sum(self.layer_cost(i, counts) for i in self.by_group.get(gid, ()))


def _left(size: int, ranks: np.ndarray, removed: int) -> int:
    if removed <= 0 or not len(ranks):
        return size
    return max(1, size - int(np.searchsorted(ranks, removed, side="left")))  # a layer keeps one channel


def _diagonal(layer: LayerUse) -> list[LayerShape]:
    return [layer.shape.with_channels(int(c), int(c)) for c in layer.grid_out[1:]]


def _costs(layer: LayerUse, table: LatencyTable) -> np.ndarray:
    if layer.shape.depthwise:
        col = [0.0] + [table[s] for s in _diagonal(layer)]
        return np.array(col)[:, None].repeat(len(layer.grid_in), axis=1)
    costs = np.zeros((len(layer.grid_out), len(layer.grid_in)))
    for i, co in enumerate(layer.grid_out[1:], 1):
        for j, ci in enumerate(layer.grid_in[1:], 1):
            costs[i, j] = table[layer.shape.with_channels(int(ci), int(co))]
    return costs
