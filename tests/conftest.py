"""Test configuration: make ``tests/helpers.py`` importable and keep ultralytics offline."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
# The library reads its data folder from the environment; tests use the shared folder beside the clone.
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))

_HERE = str(Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread (small inputs: threads only add contention)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
