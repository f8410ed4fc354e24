"""Tests for the fxprune command line, run in-process."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import fxprune
from fxprune.cli import main
from fxprune.models import create_model

pytestmark = pytest.mark.usefixtures("single_thread")


def test_demo_prints_before_after_table(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    for row in ("parameters", "FLOPs", "CPU latency, batch 1", "dense", "pruned", "ratio"):
        assert row in out
    assert "853 K" in out  # dense ResNet-56 parameters
    assert "x │" in out or "x |" in out  # a ratio cell such as 2.94x
    assert "verified" in out and "groups pruned" in out


def test_analyze_lists_groups(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "cifar_resnet20"]) == 0
    out = capsys.readouterr().out
    assert "channel groups of cifar_resnet20" in out
    assert "layer1.0.conv1" in out and "prunable" in out
    assert "groups fully frozen" in out and "--all" in out
    assert "unsupported ops: none" in out


def test_analyze_all_with_input_and_ignore(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["analyze", "torchvision:resnet18", "--input", "1,3,64,64", "--ignore", "layer4.*", "--all"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "input 1x3x64x64" in out
    assert "ignored by the user" in out  # frozen layer4 groups are listed with --all
    assert "+" in out and "more" in out  # long module lists are shortened


def test_prune_writes_model_and_report(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out_file, report_dir = tmp_path / "pruned.pt", tmp_path / "report"
    argv = ["prune", "cifar_resnet20", "--ratio", "0.5", "--out", str(out_file), "--report", str(report_dir),
            "--threads", "1"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "parameters" in out and "FLOPs" in out and "CPU latency, batch 1" in out
    assert "verified" in out
    assert out_file.is_file()
    report = (report_dir / "report.md").read_text()
    assert "Before and after" in report and "group_widths.png" in report
    assert (report_dir / "group_widths.png").stat().st_size > 0
    loaded = fxprune.load(lambda: create_model("cifar_resnet20"), out_file)
    assert loaded.conv1.weight.shape[0] < 16 or loaded.layer1[0].conv1.weight.shape[0] < 16
    assert torch.load(out_file, weights_only=True)["spec"] == "cifar_resnet20"


def test_prune_target_params_with_options(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prune", "cifar_resnet20", "--target-params", "0.6", "--ratio-for", "layer1.*=0.2",
            "--round-to", "4", "--importance", "l1", "--no-latency"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "0.6 x params" in out and "verified" in out
    assert "CPU latency" not in out


def test_prune_torchvision_global(capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["prune", "torchvision:resnet18", "--input", "1,3,64,64", "--ratio", "0.3", "--global",
            "--no-latency"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "torchvision:resnet18, ratio 0.3" in out and "verified" in out


@pytest.mark.parametrize("ratio", ["1.5", "-0.1", "abc"])
def test_bad_ratio_exits_2(ratio: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["prune", "cifar_resnet20", "--ratio", ratio]) == 2
    assert "--ratio" in capsys.readouterr().err


def test_errors_are_one_message_without_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["analyze", "no_such_model"]) == 2
    err = capsys.readouterr().err
    assert "unknown model spec" in err and "Traceback" not in err
    assert main(["prune", "cifar_resnet20", "--ratio-for", "nothing.*=0.3", "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert "matches no module" in err and "Traceback" not in err
    assert main(["prune", "cifar_resnet20", "--weights", "/no/such/file.pt"]) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.parametrize("command", [[], ["demo"], ["analyze"], ["prune"], ["methods"]])
def test_help(command: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "usage: fxprune" in out and "examples:" in out


def test_missing_command_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([]) == 2
    assert "usage: fxprune" in capsys.readouterr().err


def test_methods_lists_schedules(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["methods"]) == 0
    out = capsys.readouterr().out
    for name in ("greg1", "greg2", "tpp", "l1", "bn_scale", "taylor"):
        assert name in out
    # each method's options with the defaults it runs with
    options = fxprune.Pruner.options_of
    assert f"pick_ceiling={options('greg2')['pick_ceiling']}" in out
    assert f"zero_every={options('tpp')['zero_every']}" in out
    assert main(["methods", "greg3"]) == 2
    assert "unknown pruning method 'greg3'" in capsys.readouterr().err
