"""Real architectures pruned end to end: output shapes kept, FLOPs reduced, slim == masked original.

Every model gets random, non-degenerate weights (``randomize_``) so that the equivalence figures mean
something; inputs are small (64x64 where the architecture allows) to keep the file fast on two cores.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torchvision import models as tvm

import fxprune
from fxprune.models import create_model
from fxprune.verify.compare import flatten_outputs
from tests.helpers import check_pruned, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")


def yolo(cfg: str):
    def build():
        ultralytics = pytest.importorskip("ultralytics")
        return ultralytics.YOLO(cfg).model

    return build


def small_vit():
    return tvm.VisionTransformer(image_size=64, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64,
                                 mlp_dim=128)


def small_swin():
    return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                               window_size=[4, 4], stochastic_depth_prob=0.0)


def small_swin_v2():
    return tvm.SwinTransformer(patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4],
                               window_size=[4, 4], stochastic_depth_prob=0.0,
                               block=tvm.swin_transformer.SwinTransformerBlockV2,
                               downsample_layer=tvm.swin_transformer.PatchMergingV2)


def small_maxvit():
    return tvm.maxvit.MaxVit(input_size=(64, 64), stem_channels=16, partition_size=4, block_channels=[32, 64],
                             block_layers=[1, 1], head_dim=8, stochastic_depth_prob=0.0)


def frcnn_backbone():
    return tvm.detection.fasterrcnn_mobilenet_v3_large_fpn(weights=None, weights_backbone=None).backbone


def deeplab():
    return tvm.segmentation.deeplabv3_mobilenet_v3_large(weights=None, weights_backbone=None)


def lraspp():
    return tvm.segmentation.lraspp_mobilenet_v3_large(weights=None, weights_backbone=None)


def lane():
    return create_model("lane_resnet18", input_size=(96, 256), use_aux=True)


S64 = (1, 3, 64, 64)
B2 = (2, 3, 64, 64)

# id, factory, input shape, ratio, prune kwargs, minimum FLOPs ratio (measured value minus a margin)
CASES = [
    ("resnet18", tvm.resnet18, B2, 0.5, {}, 3.3),
    ("resnet18-0.7", tvm.resnet18, S64, 0.7, {}, 8.0),
    ("resnet18-round8", tvm.resnet18, S64, 0.5, {"round_to": 8}, 3.3),
    ("resnet50", tvm.resnet50, S64, 0.5, {}, 3.4),
    ("resnet50-0.3-l1", tvm.resnet50, S64, 0.3, {"importance": "l1"}, 1.8),
    ("mobilenet_v2", tvm.mobilenet_v2, B2, 0.5, {}, 3.0),
    ("mobilenet_v2-0.7", tvm.mobilenet_v2, S64, 0.7, {}, 7.0),
    ("mobilenet_v3_small", tvm.mobilenet_v3_small, S64, 0.5, {}, 2.6),
    ("mobilenet_v3_large", tvm.mobilenet_v3_large, S64, 0.5, {}, 3.0),
    ("mobilenet_v3_large-0.3", tvm.mobilenet_v3_large, S64, 0.3, {}, 1.7),
    ("efficientnet_b0", tvm.efficientnet_b0, S64, 0.5, {}, 3.0),
    ("shufflenet_v2_x0_5", tvm.shufflenet_v2_x0_5, B2, 0.5, {}, 1.8),
    ("shufflenet_v2_x0_5-0.7", tvm.shufflenet_v2_x0_5, S64, 0.7, {}, 2.8),
    ("densenet121", tvm.densenet121, S64, 0.5, {}, 2.7),
    ("regnet_y_400mf", tvm.regnet_y_400mf, S64, 0.5, {}, 3.4),
    ("regnet_y_400mf-0.3", tvm.regnet_y_400mf, S64, 0.3, {}, 1.65),
    ("vit-small", small_vit, S64, 0.5, {}, 1.15),
    ("vit-small-0.7", small_vit, B2, 0.7, {}, 1.25),
    ("vit_b_16@64", lambda: tvm.vit_b_16(image_size=64), S64, 0.5, {}, 1.8),
    ("swin_t@64", tvm.swin_t, S64, 0.5, {}, 1.1),
    ("swin-small", small_swin, S64, 0.5, {}, 1.3),
    ("swin-small-0.7", small_swin, S64, 0.7, {}, 1.5),
    ("swin-v2-small", small_swin_v2, S64, 0.5, {}, 1.3),
    ("maxvit-small", small_maxvit, S64, 0.5, {}, 1.6),
    ("maxvit_t", tvm.maxvit_t, (1, 3, 224, 224), 0.5, {}, 1.5),
    ("fasterrcnn_mobilenet_v3_large_fpn.backbone", frcnn_backbone, (1, 3, 96, 96), 0.5, {}, 2.7),
    ("fasterrcnn_mobilenet_v3_large_fpn.backbone-0.7", frcnn_backbone, (1, 3, 96, 96), 0.7, {}, 5.8),
    ("deeplabv3_mobilenet_v3_large", deeplab, S64, 0.5, {}, 3.7),
    ("deeplabv3_mobilenet_v3_large-0.7", deeplab, S64, 0.7, {}, 8.5),
    ("lraspp_mobilenet_v3_large", lraspp, B2, 0.5, {}, 3.2),
    ("yolov3-tiny", yolo("yolov3-tiny.yaml"), S64, 0.5, {}, 2.05),
    ("yolov5nu", yolo("yolov5nu.yaml"), S64, 0.5, {}, 2.4),
    ("yolov8n", yolo("yolov8n.yaml"), B2, 0.5, {}, 2.7),
    ("yolov8n-0.3", yolo("yolov8n.yaml"), S64, 0.3, {}, 1.55),
    ("yolov8n-0.7", yolo("yolov8n.yaml"), S64, 0.7, {}, 5.4),
    ("yolov8n-ratios", yolo("yolov8n.yaml"), S64, 0.2, {"ratios": {"model.[5-9]*": 0.6}}, 1.4),
    ("yolo11n", yolo("yolo11n.yaml"), S64, 0.5, {}, 2.5),
    ("yolov8n-seg", yolo("yolov8n-seg.yaml"), S64, 0.5, {}, 2.7),
    ("yolov8n-pose", yolo("yolov8n-pose.yaml"), S64, 0.5, {}, 2.6),
    ("yolo11n-seg", yolo("yolo11n-seg.yaml"), S64, 0.5, {}, 2.6),
    ("lane_resnet18-aux", lane, (1, 3, 96, 256), 0.5, {}, 3.3),
    ("lane_resnet18-aux-0.7", lane, (1, 3, 96, 256), 0.7, {}, 8.3),
    ("cifar_resnet56", lambda: create_model("cifar_resnet56"), (2, 3, 32, 32), 0.5, {}, 2.5),
    ("cifar_resnet56-0.3", lambda: create_model("cifar_resnet56"), (1, 3, 32, 32), 0.3, {}, 1.6),
    ("cifar_vgg16", lambda: create_model("cifar_vgg16"), (2, 3, 32, 32), 0.5, {}, 3.5),
    ("cifar_vgg16-0.7", lambda: create_model("cifar_vgg16"), (1, 3, 32, 32), 0.7, {}, 9.0),
]


def _changed(dense_out, slim_out) -> bool:
    pairs = zip(flatten_outputs(dense_out), flatten_outputs(slim_out))
    return any(not torch.allclose(a, b, rtol=1e-3, atol=1e-5) for (_, a), (_, b) in pairs)


@pytest.mark.parametrize(("factory", "shape", "ratio", "kw", "min_flops"),
                         [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_zoo_prune_is_exact(factory, shape, ratio, kw, min_flops):
    model = randomize_(factory(), seed=1)
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    res = check_pruned(model, x, ratio, min_flops_ratio=min_flops, **{"round_to": 1, **kw})  # exact widths
    report = res.report
    ultralytics_model = type(model).__module__.startswith("ultralytics")
    assert report.capture_method == ("fx-train" if ultralytics_model else "fx")
    assert report.params_ratio > 1.0
    if res.zeroed_error is None:  # only skipped when approximate (LayerNorm-coupled) groups were pruned
        assert report.approx_groups
    # removing channels changed the function: the equivalence above is not vacuous
    assert _changed(res.dense_out, res.slim_out)


def test_squeezenet_keeps_1000_classes():
    model = randomize_(tvm.squeezenet1_1(), seed=1)
    x = torch.randn(2, 3, 64, 64)
    res = check_pruned(model, x, 0.5, min_flops_ratio=2.6)
    assert res.slim_out.shape == (2, 1000)
    assert model.classifier[1].out_channels == 1000
    assert model.features[3].squeeze.out_channels < 16
    # the expand1x1/expand3x3 concat feeds the next squeeze: both halves shrink, the sum matches
    fire = model.features[3]
    assert fire.expand1x1.out_channels + fire.expand3x3.out_channels == model.features[4].squeeze.in_channels
    res = check_pruned(model, x, 0.7, min_flops_ratio=2.5)
    assert res.slim_out.shape == (2, 1000)


def test_convnext_layernorm_groups_are_approximate():
    model = randomize_(tvm.convnext_tiny(), seed=1)
    x = torch.randn(1, 3, 64, 64)
    analysis = fxprune.analyze(copy.deepcopy(model), x)
    approx = [g for g in analysis.groups if not g.exact]
    assert approx and all("LayerNorm" in g.approx_reason for g in approx)
    assert any(g.prunable > 0 for g in approx)
    exact_hidden = [g for g in analysis.groups if g.exact and "features.1.0.block.3" in g.modules]
    assert exact_hidden and exact_hidden[0].prunable == 4 * 96  # the MLP hidden channels
    res = check_pruned(model, x, 0.5, min_flops_ratio=3.4, expect_approx=True)
    report = res.report
    assert set(report.approx_groups) <= {g.id for g in approx}
    assert report.exact_error <= 1e-4 and 0 < report.approx_error < 10
    # layer scales and norms follow the sliced channels
    block = model.features[1][0]
    width = block.block[0].out_channels
    assert width < 96 and block.layer_scale.shape == (width, 1, 1)
    assert block.block[2].normalized_shape == (width,)


def test_detection_backbone_dict_output():
    model = randomize_(frcnn_backbone(), seed=2)
    x = torch.randn(1, 3, 96, 96)
    res = check_pruned(model, x, 0.5, min_flops_ratio=2.7)
    assert list(res.slim_out) == ["0", "1", "pool"]
    assert all(v.shape[1] == 256 for v in res.slim_out.values())
    assert model.out_channels == 256


def test_lane_detector_outputs():
    model = randomize_(lane(), seed=2)
    res = check_pruned(model, torch.randn(1, 3, 96, 256), 0.5, round_to=1, min_flops_ratio=3.3)
    cls, seg = res.slim_out
    assert cls.shape == (1, 101, 56, 4) and seg.shape == (1, 5, 12, 32)
    # pool's channels are flattened into cls: its input features shrink in blocks of H/32 * W/32
    assert model.pool.out_channels < 8 and model.cls[0].in_features == model.pool.out_channels * 3 * 8
    assert model.cls[2].out_features == 101 * 56 * 4
    assert model.aux_combine[0].conv.in_channels == sum(h[-1].conv.out_channels for h in (
        model.aux_header2, model.aux_header3, model.aux_header4))


@pytest.mark.parametrize("cfg", ["yolov8n.yaml", "yolo11n.yaml"])
def test_yolo_c2f_chunks_stay_even(cfg):
    model = randomize_(yolo(cfg)(), seed=3)
    res = check_pruned(model, torch.randn(1, 3, 64, 64), 0.5, min_flops_ratio=2.5)
    chunked = 0
    for name, m in model.named_modules():
        if hasattr(m, "cv1") and hasattr(m, "m") and hasattr(m, "c") and type(m).__name__ in ("C2f", "C3k2"):
            out = m.cv1.conv.out_channels
            assert out % 2 == 0, name
            first = m.m[0]
            inner = first.cv1 if hasattr(first, "cv1") else first
            assert inner.conv.in_channels == out // 2, name
            chunked += 1
    assert chunked >= 4
    equal = [g for g in res.groups if g.equal_parts]
    pruned_equal = 0
    for g in equal:
        removed = set(res.plan.remove[g.id].tolist()) if g.id in res.plan.remove else set()
        counts = {sum(int(i) in removed for i in piece) for piece in g.equal_parts[0]}
        assert len(counts) == 1, (g.id, counts)
        pruned_equal += counts != {0}
    assert pruned_equal >= 4, f"{pruned_equal} of {len(equal)} chunked groups lost channels"


@pytest.mark.parametrize("factory", [tvm.resnet18, yolo("yolov8n.yaml")], ids=["resnet18", "yolov8n"])
def test_global_ranking(factory):
    model = randomize_(factory(), seed=1)
    check_pruned(model, torch.randn(1, 3, 64, 64), 0.5, global_ranking=True, min_flops_ratio=2.0)


def test_cifar_resnet56_ratio_applies_to_prunable_channels():
    model = randomize_(create_model("cifar_resnet56"), seed=1)
    check_pruned(model, torch.randn(1, 3, 32, 32), 0.3, round_to=1, min_flops_ratio=1.3)
    for conv in (model.conv1, model.layer1[0].conv2, model.layer1[8].conv2):
        assert 10 <= conv.out_channels <= 13, conv


def test_vit_prunes_heads_and_hidden_dim():
    """torchvision ViT: whole attention heads go with their embedding channels; ``hidden_dim`` follows."""
    model = tvm.vit_b_16(image_size=64).eval()
    randomize_(model, 0)
    x = torch.randn(1, 3, 64, 64)
    report = fxprune.prune(model, x, 0.5)
    attn = model.encoder.layers[0].self_attention
    assert (attn.num_heads, attn.embed_dim, attn.head_dim) == (6, 384, 64)
    assert model.hidden_dim == 384 and model.conv_proj.out_channels == 384
    assert model.class_token.shape[-1] == 384 and model.encoder.pos_embedding.shape[-1] == 384
    assert report.exact_error <= 1e-4 and report.approx_groups  # the stream meets LayerNorms
    assert report.flops_ratio > 3.5
    assert model(x).shape == (1, 1000)


def test_multihead_attention_heads_are_exact_without_layernorm():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = torch.nn.Linear(16, 32)
            self.attn = torch.nn.MultiheadAttention(32, 4, batch_first=True)
            self.head = torch.nn.Linear(32, 5)

        def forward(self, x):
            x = self.inp(x)
            a, _ = self.attn(x, x, x, need_weights=False)
            return self.head((x + a)[:, 0])

    model = Block().eval()
    randomize_(model, 1)
    x = torch.randn(2, 7, 16)
    dense = model(x)
    report = fxprune.prune(model, x, 0.5)
    assert model.attn.num_heads == 2 and model.attn.embed_dim == 16
    assert report.exact_error <= 1e-4 and not report.approx_groups
    assert not torch.allclose(model(x), dense)
