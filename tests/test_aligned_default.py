"""Aligned widths by default: ``round_to`` None is 8 in the core, the backend's alignment in the CLI and in
``fxprune.deploy``; ``round_to=1`` opts out; the value used is in the report and the CLI output."""

from __future__ import annotations

import json

import pytest
import torch
import torchvision
from fxprune.deploy.alignment import default_round_to
from torch import nn

import fxprune
from fxprune.cli import main
from fxprune.plan import DEFAULT_ROUND_TO
from tests.helpers import randomize_, small_edgenext

pytestmark = pytest.mark.usefixtures("single_thread")

X = (1, 3, 32, 32)


def resnet18() -> nn.Module:
    return randomize_(torchvision.models.resnet18(), 0).eval()


def changed_widths(before: nn.Module, after: nn.Module) -> list[int]:
    old = {n: m.out_channels for n, m in before.named_modules() if isinstance(m, nn.Conv2d)}
    new = {n: m.out_channels for n, m in after.named_modules() if isinstance(m, nn.Conv2d)}
    return [new[n] for n in new if new[n] != old[n]]


def test_default_is_aligned_to_eight_and_reported():
    assert DEFAULT_ROUND_TO == 8
    model = resnet18()
    report = fxprune.prune(model, torch.randn(X), 0.3)
    widths = changed_widths(resnet18(), model)
    assert report.round_to == 8 and report.verified
    assert len(widths) >= 10 and all(w % 8 == 0 for w in widths), widths


def test_round_to_one_opts_out():
    model = resnet18()
    report = fxprune.prune(model, torch.randn(X), 0.3, round_to=1)
    widths = changed_widths(resnet18(), model)
    assert report.round_to == 1
    assert any(w % 8 for w in widths), widths  # 64 * 0.7 = 44.8: 45 channels kept


def test_default_plan_of_an_analysis_is_aligned():
    analysis = fxprune.analyze(resnet18(), torch.randn(X))
    plan = analysis.plan(0.3)
    assert all((g.width - len(plan.remove.get(g.id, ()))) % 8 == 0 for g in analysis.prunable_groups)
    assert plan.removed_count() > 0


@pytest.mark.parametrize("bad", [0, -8, 2.5, True, "8"])
def test_bad_round_to(bad):
    model = resnet18()
    with pytest.raises(ValueError, match="round_to"):
        fxprune.prune(model, torch.randn(X), 0.3, round_to=bad)
    assert model.conv1.out_channels == 64


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_size_target_lands_at_or_below_it_with_aligned_widths(metric):
    dense = resnet18()
    model = resnet18()
    report = fxprune.prune(model, torch.randn(X), **{f"target_{metric}": 0.5})
    if metric == "flops":
        kept = report.flops_after / report.flops_before
    else:
        kept = report.params_after / report.params_before
    assert 0.4 < kept <= 0.5, kept  # the nearest aligned plan at or below the target
    assert report.round_to == 8
    assert all(w % 8 == 0 for w in changed_widths(dense, model))


def test_deploy_prune_defaults_to_the_backend_alignment():
    from fxprune.deploy import prune as deploy_prune

    model = resnet18()
    report = deploy_prune(model, torch.randn(X), 0.3, backend="ort")
    expected = default_round_to("ort")
    assert report.round_to == expected
    assert all(w % expected == 0 for w in changed_widths(resnet18(), model))


def test_cli_states_the_alignment(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prune", "cifar_resnet20", "--ratio", "0.3", "--no-latency"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "round_to 8" in out and "multiples of 8 (round_to, default alignment" in out
    argv = ["prune", "cifar_resnet20", "--ratio", "0.3", "--no-latency", "--round-to", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "multiples of 1 (round_to, --round-to)" in out


def test_alignment_latency_bench_prunes_once_per_alignment_and_times_all(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from bench import alignment_latency

    out = tmp_path / "a.json"
    assert alignment_latency.main(["--models", "tv:squeezenet1_1", "--round-to", "8,1", "--backends", "ort",
                                   "--budget-s", "0.2", "--out", str(out)]) == 0
    (rec,) = json.loads(out.read_text())["records"]
    kept = rec["flops_kept"]
    assert set(kept) == {"round_to=8", "round_to=1"}
    assert 0.2 < kept["round_to=1"] <= kept["round_to=8"] < 0.5
    assert set(rec["ort"]["median_ms"]) == {"dense", "round_to=8", "round_to=1"}
    assert all(v > 0 for v in rec["ort"]["speedup"].values())
    assert "| tv:squeezenet1_1 | ort |" in capsys.readouterr().out


def test_depthwise_convs_on_a_per_head_split_do_not_block_the_default_alignment():
    """EdgeNeXt's last stage: 304 channels in 8 heads; its split depthwise convs see 76 channels, 38 per atom,
    which 8 does not divide. The depthwise convs do not set the multiple: two atoms go, every other layer of
    the stage stays a multiple of 8 (the stage used to keep all its channels at the default alignment)."""
    from fxprune.groups.grouped_conv import sets_alignment
    from fxprune.groups.slots import Block

    model = small_edgenext(dims=(16, 32, 80, 304), global_block_counts=(0, 0, 0, 1), depths=(1, 1, 1, 3))
    x = torch.randn(1, 3, 64, 64)
    member = "stages.3.blocks.2.convs.0"
    (group,) = [g for g in fxprune.analyze(model, x).groups if member in g.modules]
    assert group.divisor == 76 and not group.frozen
    block = Block(member, ((f"{member}.weight", 0),), 0, 76)
    assert not sets_alignment(model, block)
    assert sets_alignment(model, Block("head.fc", (("head.fc.weight", 1),), 0, 8))

    report = fxprune.prune(model, x)
    assert report.verified and report.flops_after / report.flops_before < 0.3
    stage = model.stages[3]
    assert stage.blocks[2].convs[0].out_channels == 38 and stage.blocks[2].xca.num_heads == 4
    widths = [m.out_channels for m in stage.modules() if isinstance(m, nn.Conv2d) and m.groups == 1]
    widths += [m.out_features for m in stage.modules() if isinstance(m, nn.Linear)]
    assert widths and all(w % 8 == 0 for w in widths), widths
