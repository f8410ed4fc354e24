"""bench/zoo.py hands every setting to its forked runs as arguments (no module-level flags)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

ZOO = Path(__file__).resolve().parents[1] / "bench" / "zoo.py"


def _zoo():
    spec = importlib.util.spec_from_file_location("bench_zoo_under_test", ZOO)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("replan", [False, True])
def test_replan_setting_reaches_the_forked_run(replan: bool) -> None:
    zoo = _zoo()
    assert not hasattr(zoo, "REPLAN")
    rec = zoo.run_tool("fx", "squeezenet1_1", 64, 0.5, "none", 120.0, 300.0, 1, None, False, replan)
    assert rec.get("status") == "ok", rec.get("error")
    assert ("replan_s" in rec) == replan


def test_no_replan_flag_parses_to_the_argument() -> None:
    zoo = _zoo()
    assert zoo.parse_args(["--no-replan"]).no_replan is True
    assert zoo.parse_args([]).no_replan is False
