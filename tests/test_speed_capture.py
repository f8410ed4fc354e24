"""The capture's fast paths build what torch.fx builds: the same GraphModule tree and the same node scopes."""

from __future__ import annotations

import pytest
import torch
import torch.fx as fx
import torch.utils._pytree as pytree
import torchvision.models as tvm
from torch import nn
from torch.fx._lazy_graph_module import _make_graph_module, _use_lazy_graph_module

from fxprune.capture.skeleton import graph_module
from fxprune.capture.tracer import LeafTracer


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.register_buffer("scale", torch.full((1, 4, 1, 1), 0.5), persistent=False)
        self.register_buffer("shift", torch.zeros(1, 4, 1, 1))

    def forward(self, x):
        return self.conv(x) * self.scale + self.shift


class Odd(nn.Module):
    """Root parameters and buffers read in forward, a module called twice, a plain tensor attribute (a traced
    constant), a container whose child is used and which is a leaf elsewhere."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 4, 1)
        self.act = nn.ReLU()
        self.block = nn.Sequential(Inner(), nn.BatchNorm2d(4))
        self.pair = nn.Sequential(nn.Conv2d(4, 4, 1), nn.Conv2d(4, 4, 1))
        self.gain = nn.Parameter(torch.ones(1, 4, 1, 1))
        self.register_buffer("bias", torch.zeros(1, 4, 1, 1), persistent=False)
        self.table = torch.arange(4.0).reshape(1, 4, 1, 1)

    def forward(self, x):
        x = self.act(self.stem(x))
        x = self.act(self.block(x)) * self.gain + self.bias + self.table
        return self.pair[0](x) + self.pair(x)


def _tree(gm: nn.Module) -> list:
    """Names, classes and objects of the tree (containers by class only), parameters and buffers with their
    persistence."""
    modules = [(n, type(m).__name__, type(m) is nn.Module or id(m)) for n, m in gm.named_modules() if n]
    tensors = [(n, id(t)) for n, t in gm.named_parameters()] + [(n, id(t)) for n, t in gm.named_buffers()]
    persistent = sorted((n, sorted(m._non_persistent_buffers_set)) for n, m in gm.named_modules())
    return [modules, tensors, persistent, list(gm.state_dict())]


@pytest.mark.parametrize("name", ["odd", "resnet18", "mobilenet_v3_small", "densenet121", "vit_b_16"])
def test_graph_module_skeleton_equals_torchs(name: str) -> None:
    model = Odd().eval() if name == "odd" else getattr(tvm, name)().eval()
    # Sequential as a leaf in the odd model: ``pair.0`` goes in a container that ``pair`` then replaces
    graph = LeafTracer([nn.Sequential] if name == "odd" else ()).trace(model)
    with _use_lazy_graph_module(True):
        expected = _make_graph_module(model, graph, "Model")
    got = graph_module(model, graph, "Model")
    assert _tree(got) == _tree(expected)
    assert type(got).__name__ == type(expected).__name__ and got._tracer_cls is expected._tracer_cls
    assert got.graph is graph and graph.owning_module is got
    x = torch.randn(1, 3, 32, 32) if name == "odd" else torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(got(x), model(x), rtol=0, atol=0)


def test_odd_model_skeleton_takes_both_paths() -> None:
    """A plain tensor attribute (``self.table``) is neither parameter nor buffer: torch's copy installs it."""
    model = Odd().eval()
    graph = LeafTracer().trace(model)
    targets = {n.target for n in graph.nodes if n.op == "get_attr"}
    assert {"gain", "bias", "table", "block.0.scale"} <= targets
    assert _tree(graph_module(model, graph, "M")) == _tree(fx.GraphModule(model, graph, "M"))


class Twice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.head = nn.Sequential(Inner(), nn.ReLU())

    def forward(self, x):
        x = self.inner(self.inner(x))
        x = x.flatten(2).transpose(1, 2).reshape(x.shape)
        return self.head(x).relu()


class Refuses(nn.Module):
    def forward(self, x):
        x = x * 2
        raise ValueError("not traceable")


class Catching(nn.Module):
    """A forward that catches its submodule's error while being traced."""

    def __init__(self) -> None:
        super().__init__()
        self.refuses, self.conv = Refuses(), nn.Conv2d(4, 4, 1)

    def forward(self, x):
        try:
            x = self.refuses(x)
        except ValueError:
            pass
        return self.conv(x).relu() + 1


@pytest.mark.parametrize("name", ["twice", "catching", "mobilenet_v3_small", "swin_t"])
def test_tracer_scopes_equal_fx_tracer(name: str) -> None:
    """Every node's ``nn_module_stack`` and scope are those torch.fx's own tracer records."""
    small = {"twice": Twice, "catching": Catching}
    model = small[name]().eval() if name in small else getattr(tvm, name)().eval()
    ours, theirs = LeafTracer(), fx.Tracer()
    a, b = ours.trace_module(model).graph, theirs.trace(model)
    assert fx.graph.pytree is pytree  # the argument scan is back after the trace
    rows = lambda g: [(n.name, n.op, str(n.target), n.meta.get("nn_module_stack")) for n in g.nodes]  # noqa: E731
    assert rows(a) == rows(b)
    assert ours.node_name_to_scope == theirs.node_name_to_scope
    assert ours.scope.module_path == theirs.scope.module_path and ours.module_stack == theirs.module_stack


def test_argument_scan_is_back_after_a_failed_trace() -> None:
    class Branchy(nn.Module):
        def forward(self, x):
            return x if x.sum() > 0 else -x  # control flow on a traced value: the trace fails

    with pytest.raises(fx.proxy.TraceError):
        LeafTracer().trace_module(Branchy())
    assert fx.graph.pytree is pytree
