"""The public API: argument checking, error messages, capture failures, and the planning options."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torchvision
from torch import nn

import fxprune
from fxprune.measure import count_flops
from tests.helpers import check_pruned, output_shapes, randomize_

pytestmark = pytest.mark.usefixtures("single_thread")

X64 = (1, 3, 64, 64)


def resnet18() -> nn.Module:
    return randomize_(torchvision.models.resnet18(), 0).eval()


@pytest.fixture(scope="module")
def resnet_analysis():
    model = resnet18()
    return fxprune.analyze(model, torch.randn(X64))


def conv_widths(model: nn.Module) -> dict[str, int]:
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


# ---------------------------------------------------------------- argument checking
@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_bad_ratio(ratio):
    model = resnet18()
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(ValueError, match="ratio"):
        fxprune.prune(model, torch.randn(X64), ratio)
    # nothing was touched
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


@pytest.mark.parametrize("ratio", [1.0, -0.1])
def test_bad_ratio_in_plan_and_in_ratios(resnet_analysis, ratio):
    with pytest.raises(ValueError, match="ratio"):
        resnet_analysis.plan(ratio)
    with pytest.raises(ValueError, match="layer1"):
        resnet_analysis.plan(0.5, ratios={"layer1.*": ratio})


def test_ignore_pattern_that_matches_nothing():
    with pytest.raises(ValueError, match=r"no\.such\.module"):
        fxprune.prune(resnet18(), torch.randn(X64), 0.5, ignore=["no.such.module"])
    with pytest.raises(ValueError, match="not part of the model"):
        fxprune.analyze(resnet18(), torch.randn(X64), ignore=[nn.Conv2d(3, 3, 1)])


def test_ratio_pattern_that_matches_nothing(resnet_analysis):
    with pytest.raises(ValueError, match=r"nomatch\*"):
        resnet_analysis.plan(0.5, ratios={"nomatch*": 0.5})
    with pytest.raises(ValueError, match=r"nomatch\*"):
        fxprune.prune(resnet18(), torch.randn(X64), 0.5, ratios={"nomatch*": 0.5})


def test_unknown_importance(resnet_analysis):
    with pytest.raises(ValueError, match="importance"):
        resnet_analysis.plan(0.5, importance="taylor-unknown")


@pytest.mark.parametrize("target", [0.0, 1.0, 1.5])
def test_bad_target_fraction(target):
    with pytest.raises(ValueError, match="target"):
        fxprune.prune(resnet18(), torch.randn(X64), target_flops=target)


class FrozenClassifier(nn.Module):
    """The classifier's inputs come through a reshape with a literal size: every channel of fc is frozen."""

    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                      nn.Conv2d(16, 32, 3, padding=1), nn.ReLU())
        self.fc = nn.Linear(32, 10)

    def forward(self, x):
        y = self.features(x)
        return self.fc(y.view(y.size(0), 32, -1).mean(-1))


def test_ratio_on_a_frozen_layer():
    model = randomize_(FrozenClassifier()).eval()
    x = torch.randn(2, 3, 16, 16)
    analysis = fxprune.analyze(model, x)
    assert all(g.prunable == 0 for g in analysis.groups if "fc" in g.modules)
    with pytest.raises(ValueError, match="frozen") as info:
        analysis.plan(0.5, ratios={"fc": 0.5})
    assert "'fc'" in str(info.value) and "model output" in str(info.value)
    # features.3's inputs can go (its outputs cannot): only the fully frozen pattern is refused
    analysis.plan(0.0, ratios={"features.3": 0.5})
    with pytest.raises(ValueError, match="'fc'"):
        analysis.plan(0.0, ratios={"features.3": 0.5, "fc": 0.3})


def test_ratio_on_an_ignored_layer_of_resnet():
    model = resnet18()
    with pytest.raises(ValueError, match="ignored by the user"):
        fxprune.prune(model, torch.randn(X64), 0.5, ignore=["layer4", "fc"], ratios={"fc": 0.5})


def test_ratio_on_the_classifier_prunes_only_its_inputs():
    """fc's outputs are the model's: a ratio for fc reaches the channels that feed it (layer4's)."""
    model = resnet18()
    check_pruned(model, torch.randn(X64), 0.0, ratios={"fc": 0.5}, min_flops_ratio=1.1)
    assert model.fc.out_features == 1000 and model.fc.in_features == 256
    assert model.layer4[1].conv2.out_channels == 256 and model.layer3[1].conv2.out_channels == 256
    assert model.layer1[0].conv1.out_channels == 64


# ---------------------------------------------------------------- what must not change
@pytest.mark.parametrize("ignore", [["layer2"], ["layer2.*"], "object", "type"])
def test_ignored_modules_keep_their_shapes(ignore):
    model = resnet18()
    if ignore == "object":
        ignore = [model.layer2]
    elif ignore == "type":
        ignore = [torchvision.models.resnet.Bottleneck, nn.Linear]  # no Bottleneck in resnet18
    shapes = {n: p.shape for n, p in model.named_parameters()}
    check_pruned(model, torch.randn(X64), 0.5, ignore=ignore, min_flops_ratio=1.3)
    after = {n: p.shape for n, p in model.named_parameters()}
    kept_prefix = "fc." if isinstance(ignore[0], type) else "layer2."
    kept = [n for n in shapes if n.startswith(kept_prefix)]
    assert kept and all(after[n] == shapes[n] for n in kept)
    assert any(after[n] != shapes[n] for n in shapes if not n.startswith(kept_prefix))


def test_frozen_parameters_keep_their_shapes():
    model = resnet18()
    frozen = ["layer3.0.conv1.weight", "layer1.1.bn2.weight"]
    for n in frozen:
        model.get_parameter(n).requires_grad_(False)
    shapes = {n: p.shape for n, p in model.named_parameters()}
    check_pruned(model, torch.randn(X64), 0.5, min_flops_ratio=1.5)
    for n in frozen:
        p = model.get_parameter(n)
        assert p.shape == shapes[n] and not p.requires_grad
    # the layers coupled to them keep their widths too, others shrink
    assert model.layer3[0].bn1.num_features == 256 and model.layer1[1].conv2.out_channels == 64
    assert model.layer4[0].conv1.out_channels < 512
    assert all(p.requires_grad for n, p in model.named_parameters() if n not in frozen)


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_output_shapes_never_change(ratio):
    model = randomize_(torchvision.models.segmentation.lraspp_mobilenet_v3_large(
        weights=None, weights_backbone=None, num_classes=5)).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        before = output_shapes(model(x))
    check_pruned(model, x, ratio, min_flops_ratio=2.0)
    with torch.no_grad():
        assert output_shapes(model(torch.randn(1, 3, 96, 128))) == [("out['out']", (1, 5, 96, 128))]
        assert output_shapes(model(x)) == before


def test_training_mode_and_class_are_kept():
    model = resnet18().train()
    report = fxprune.prune(model, torch.randn(2, 3, 64, 64), 0.5)
    assert model.training and all(m.training for m in model.modules())
    assert type(model) is torchvision.models.ResNet and report.capture_method == "fx"
    out = model(torch.randn(2, 3, 64, 64))
    out.sum().backward()  # the slim model trains
    assert model.conv1.weight.grad is not None and model.conv1.weight.grad.shape == model.conv1.weight.shape


def test_verify_false_skips_the_check():
    model = resnet18()
    report = fxprune.prune(model, torch.randn(X64), 0.5, verify=False)
    assert report.exact_error is None and not report.verified and report.flops_ratio > 3.0


def test_report_fields():
    model = resnet18()
    x = torch.randn(X64)
    dense_params, dense_flops = sum(p.numel() for p in model.parameters()), count_flops(model, x)
    r = fxprune.prune(model, x, 0.5)
    # the report's counts are those of the dense and the slim model, counted here independently
    assert r.params_before == dense_params and r.params_after == sum(p.numel() for p in model.parameters())
    assert r.flops_before == dense_flops and r.flops_after == count_flops(model, x)
    assert 3.0 < r.flops_ratio < 4.5 and 2.5 < r.params_ratio < 4.5  # about (1 - 0.5)^2 of the FLOPs
    assert r.exact_error <= 1e-4 and r.approx_error is None and r.approx_groups == []
    assert r.capture_method == "fx" and r.analysis_seconds > 0 and r.slim_seconds > 0
    assert len(r.widths) == len({gid for gid, *_ in r.widths})
    assert (1000, 1000) in [(b, a) for _, m, b, a in r.widths if m == "fc"]
    assert (64, 32) in [(b, a) for _, m, b, a in r.widths if m == "conv1"]
    assert r.changes["conv1.weight[0]"] == (64, 32)
    assert r.spec["conv1.weight"] == [32, 3, 7, 7] and model.conv1.weight.shape == (32, 3, 7, 7)


def test_summary_rows(resnet_analysis):
    rows = resnet_analysis.summary_rows()
    assert len(rows) == len(resnet_analysis.groups)
    keys = {"group", "modules", "members", "width", "prunable", "constraints", "exact", "note"}
    assert keys <= set(rows[0])
    fc_out = [r for r in rows if r["modules"] == ["fc"] and r["width"] == 1000]
    assert fc_out and fc_out[0]["prunable"] == 0 and fc_out[0]["note"] == "model output"
    stem = [r for r in rows if "conv1" in r["modules"] and r["width"] == 64]
    assert stem and stem[0]["prunable"] == 64 and "conv1.weight[0]" in stem[0]["members"]
    assert resnet_analysis.captured.method == "fx" and resnet_analysis.unsupported == []


# ---------------------------------------------------------------- capture failures
class DataDependent(nn.Module):
    """Python control flow on tensor values: neither symbolic tracing nor torch.export can capture it."""

    def __init__(self, c: int):
        super().__init__()
        self.conv = nn.Conv2d(c, c, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            y = y * 2
        if y.abs().max().item() > 1e6:  # a Python float decides
            y = y / 10
        return y


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.body = nn.Sequential(nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), DataDependent(32), nn.ReLU())
        self.tail = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1), nn.ReLU())
        self.head = nn.Linear(32, 10)

    def forward(self, x):
        return self.head(self.tail(self.body(self.stem(x))).mean((2, 3)))


def test_untraceable_submodule_names_itself():
    model = randomize_(Net()).eval()
    x = torch.randn(1, 3, 16, 16)
    with pytest.raises(fxprune.CaptureError) as info:
        fxprune.analyze(model, x)
    err = info.value
    msg = str(err)
    assert err.module == "body.2"
    assert "'body.2'" in msg and "DataDependent" in msg
    assert "leaf_modules=['body.2']" in msg
    assert "torch.export" in msg
    assert err.op is not None and "y.sum() > 0" in err.op
    with pytest.raises(fxprune.CaptureError):
        fxprune.prune(model, x, 0.5)


@pytest.mark.parametrize("leaf", ["body.2", DataDependent], ids=["by-name", "by-type"])
def test_untraceable_submodule_as_leaf(leaf):
    model = randomize_(Net()).eval()
    x = torch.randn(1, 3, 16, 16)
    analysis = fxprune.analyze(copy.deepcopy(model), x, leaf_modules=[leaf])
    assert analysis.captured.method == "fx"
    assert [u.module for u in analysis.unsupported] == ["body.2"]
    check_pruned(model, x, 0.5, leaf_modules=[leaf], min_flops_ratio=1.2)
    # channels entering and leaving the opaque module are frozen; its own conv untouched
    assert model.body[0].out_channels == 32 and model.body[2].conv.weight.shape == (32, 32, 3, 3)
    assert model.tail[0].in_channels == 32
    assert model.stem[0].out_channels < 16 and model.tail[0].out_channels < 32


# ---------------------------------------------------------------- planning options
def test_target_flops_half():
    model = resnet18()
    r = check_pruned(model, torch.randn(X64), 0.5, target_flops=0.5, min_flops_ratio=1.5).report
    assert abs(r.flops_after / r.flops_before - 0.5) <= 0.05


def test_target_params():
    model = resnet18()
    r = check_pruned(model, torch.randn(X64), 0.5, target_params=0.3, min_flops_ratio=1.5).report
    assert abs(r.params_after / r.params_before - 0.3) <= 0.03


def test_target_unreachable_when_everything_is_frozen():
    model = randomize_(FrozenClassifier()).eval()
    with pytest.raises(ValueError, match="cannot reach"):
        fxprune.prune(model, torch.randn(2, 3, 16, 16), target_flops=0.01, ignore=["features.0"])


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
@pytest.mark.parametrize("ratio", [0.3, 0.7])
def test_round_to(name, ratio):
    model = randomize_(getattr(torchvision.models, name)()).eval()
    before = conv_widths(model)
    check_pruned(model, torch.randn(X64), ratio, round_to=8, min_flops_ratio=1.2)
    after = conv_widths(model)
    changed = [n for n in after if after[n] != before[n]]
    assert len(changed) > len(after) // 2
    for n in changed:
        assert after[n] % 8 == 0, (n, before[n], after[n])


def test_round_to_in_the_plan(resnet_analysis):
    for ratio in (0.2, 0.5, 0.8):
        plan = resnet_analysis.plan(ratio, round_to=16)
        pruned = [(g.id, g.width, len(plan.remove[g.id])) for g in resnet_analysis.groups
                  if len(plan.remove.get(g.id, ()))]
        assert len(pruned) >= 5, (ratio, pruned)  # every prunable group of resnet18 is a multiple of 16
        for gid, width, removed in pruned:
            assert (width - removed) % 16 == 0, (gid, width, removed)


@pytest.mark.parametrize("min_width", [1, 24])
def test_min_width(min_width):
    model = resnet18()
    before = conv_widths(model)
    check_pruned(model, torch.randn(X64), 0.95, min_width=min_width, round_to=1, min_flops_ratio=3.0)
    after = conv_widths(model)
    assert any(after[n] < before[n] for n in after)
    for n in after:
        assert after[n] >= min(min_width, before[n]), (n, after[n])
    if min_width == 24:
        assert model.conv1.out_channels == 24 and model.layer4[0].conv1.out_channels == 26


def test_every_layer_keeps_a_channel():
    """At 0.99 many layers go down to a single channel; none to zero, and the slim model still matches."""
    model = randomize_(torchvision.models.mobilenet_v3_small()).eval()
    check_pruned(model, torch.randn(X64), 0.99, round_to=1, min_flops_ratio=5.0)
    widths = sorted(conv_widths(model).values())
    assert widths[0] == 1 and widths.count(1) >= 10, widths


def test_per_module_ratios():
    model = resnet18()
    check_pruned(model, torch.randn(X64), 0.0, ratios={"layer3.*": 0.75, "layer1.0.conv1": 0.5},
                 min_flops_ratio=1.1)
    assert model.layer3[0].conv1.out_channels == 64 and model.layer3[1].conv1.out_channels == 64
    assert model.layer3[1].conv2.out_channels == 64  # layer3's residual stream (every block shares it)
    assert model.layer1[0].conv1.out_channels == 32 and model.layer1[1].conv1.out_channels == 64
    assert model.layer2[0].conv1.out_channels == 128 and model.layer4[0].conv1.out_channels == 512


def test_plan_then_apply():
    model = resnet18()
    x = torch.randn(X64)
    analysis = fxprune.analyze(model, x)
    plan = analysis.plan(0.5, importance="l1")
    assert plan.removed_count() > 0
    report = fxprune.apply_plan(analysis, plan, x)
    assert report.exact_error <= 1e-4 and report.flops_ratio > 3.0
    # the model has the widths of this plan: the stem group lost exactly the channels the plan names
    (stem,) = [g for g in analysis.groups if "conv1" in g.modules and g.width == 64]
    removed = plan.remove[stem.id]
    assert isinstance(removed, np.ndarray) and len(removed) > 0
    assert model.conv1.out_channels == model.bn1.num_features == 64 - len(removed)


def test_global_ranking_removes_channels(resnet_analysis):
    plan = resnet_analysis.plan(0.5, global_ranking=True)
    prunable = sum(g.prunable for g in resnet_analysis.groups)
    assert 0.4 * prunable <= plan.removed_count() <= 0.6 * prunable
