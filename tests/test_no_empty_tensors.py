"""Pruning never leaves a tensor with no channels: runtimes refuse zero-width tensors.

YOLO11n's C2PSA attention keeps its query/key channels (``key_dim``) as atoms of their own next to the
residual half they share a group with; a plan that removed all of them gave ``key_dim == 0``, a model torch
runs but OpenVINO cannot compile ("object is not initialized").
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("ultralytics")


def test_yolo11_attention_keeps_query_key_channels_and_compiles_on_openvino(single_thread):
    from fxprune.integrations.ultralytics import PruningOptions
    from fxprune.integrations.ultralytics.engine import make_pruner
    from fxprune.integrations.ultralytics.interface import deployment_form, example_input
    from ultralytics import YOLO

    torch.manual_seed(0)
    model = YOLO("yolo11n.yaml").model.float()
    attn = model.model[10].m[0].attn
    for m in (attn.qkv.conv, attn.qkv.bn):  # query/key channels the least important: the plan's first pick
        m.weight.data[: 2 * attn.key_dim * attn.num_heads] *= 1e-3
    options = PruningOptions(method="l1", ratio=0.7, round_to=8, global_ranking=False, min_width=1)
    pruner = make_pruner(model, example_input(model, 64), options)
    pruner.prune()
    assert 8 <= attn.key_dim < 32  # pruned, not emptied: multiples of round_to stay
    x = torch.rand(1, 3, 64, 64)
    net = deployment_form(model)
    ov = pytest.importorskip("openvino")
    compiled = ov.Core().compile_model(ov.convert_model(net, example_input=x), "CPU")
    with torch.no_grad():
        expected = net(x)
    got = torch.from_numpy(compiled(x.numpy())[0])
    torch.testing.assert_close(got, expected, rtol=1e-3, atol=1e-3)
