"""Test configuration: the shared data folder, ultralytics kept offline, and common fixtures.

Shared test code is imported as a package: ``from tests.helpers import check_pruned``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.small_task import SmallResNet, Task, train

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


@pytest.fixture(scope="module")
def trained() -> tuple[SmallResNet, Task]:
    """A SmallResNet trained to ~95 % on the synthetic task (copied by each test)."""
    torch.manual_seed(0)
    task, model = Task(), SmallResNet()
    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(model, task, 80)
    finally:
        torch.set_num_threads(prev)
    assert task.accuracy(model) > 0.9
    return model, task
