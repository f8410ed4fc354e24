"""Test configuration: the shared data folder, ultralytics kept offline, and common fixtures.

Shared test code is imported as a package: ``from tests.helpers import check_pruned``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

os.environ.setdefault("YOLO_OFFLINE", "1")
# The library reads its data folder from the environment; tests use the shared folder beside the clone.
os.environ.setdefault("FXPRUNE_SHARED_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))


@pytest.fixture
def single_thread():
    """Run a test with one intra-op thread (small inputs: threads only add contention)."""
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(prev)
