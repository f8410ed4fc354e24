"""Pruning under DistributedDataParallel: two gloo processes on CPU make the same decisions, or refuse."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

import fxprune
from fxprune.regularize.distributed import (
    RankMismatchError,
    average_across_ranks,
    plan_fingerprint,
    unwrap_model,
    weights_fingerprint,
)

WORLD = 2


class TinyResidual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn0 = nn.BatchNorm2d(16)
        self.conv1 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 16, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(16)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = F.relu(self.bn0(self.stem(x)))
        y = F.relu(self.bn1(self.conv1(x)))
        x = F.relu(x + self.bn2(self.conv2(y)))
        return self.fc(x.mean((2, 3)))


def _train_and_prune(rank: int, method: str, options: dict, steps: int, perturb: bool) -> dict:
    torch.manual_seed(0)
    model = TinyResidual()
    ddp = nn.parallel.DistributedDataParallel(model)  # broadcasts rank 0's weights
    if perturb and rank == 1:  # e.g. a checkpoint loaded on one rank after wrapping
        with torch.no_grad():
            model.conv1.weight[0, 0, 0, 0] += 1e-3
    x = torch.randn(1, 3, 8, 8)
    pruner = fxprune.Pruner(ddp, x, method=method, ratio=0.5, **options)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=0.05, momentum=0.9)
    data = torch.Generator().manual_seed(100 + rank)  # every rank sees its own batches, rank 1 flat images
    for _ in range(steps):
        inputs = torch.randn(8, 3, 8, 8, generator=data)
        if rank == 1:
            inputs = inputs.mean((2, 3), keepdim=True).expand(8, 3, 8, 8).contiguous()
        target = torch.randint(0, 4, (8,), generator=data)
        task = F.cross_entropy(ddp(inputs), target)
        loss = task + pruner.penalty()
        optimizer.zero_grad()
        loss.backward()
        pruner.after_backward()
        optimizer.step()
        pruner.step(loss=task.item())
    report = pruner.prune()
    return {
        "shapes": {k: list(v.shape) for k, v in model.state_dict().items()},
        "fingerprint": weights_fingerprint(model).tolist(),
        "plan": {str(k): v for k, v in pruner.pruned_channels().items()},
        "verified": report.verified,
    }


def _worker(rank: int, store_file: str, out_dir: str, method: str, options: dict, steps: int, perturb: bool):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_file}", rank=rank, world_size=WORLD)
    try:
        result = _train_and_prune(rank, method, options, steps, perturb)
    except RankMismatchError as e:
        result = {"error": str(e)}
    finally:
        dist.destroy_process_group()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


def _run(method: str, options: dict | None = None, steps: int = 6, perturb: bool = False) -> list[dict]:
    with tempfile.TemporaryDirectory() as tmp:
        store = os.path.join(tmp, "store")
        mp.spawn(_worker, args=(store, tmp, method, options or {}, steps, perturb), nprocs=WORLD, join=True)
        return [json.loads(Path(tmp, f"rank{r}.json").read_text()) for r in range(WORLD)]


@pytest.mark.parametrize(
    "method, options",
    [
        ("greg1", {"update_every": 1, "delta": 0.5, "ceiling": 1.0, "stabilize": 1}),  # gradient term
        ("tpp", {"update_every": 2, "stabilize": 2, "zero_every": 1}),  # loss term
        ("taylor", {"iterations": 4}),  # scores from gradients of each rank's own batches
        ("slr", {"update_every": 2, "rounds": 3}),  # acceptance uses each rank's own task loss
        ("admm", {"update_every": 2, "rounds": 3}),
        ("ccm", {"steps": 6, "calibration_steps": 4, "threshold": 0.7}),  # statistics from each rank's data
    ],
)
def test_ranks_make_the_same_slim_model(method, options):
    if method not in fxprune.regularize.method_names():
        pytest.skip(f"{method} not available")
    results = _run(method, options)
    assert all("error" not in r for r in results), results
    first, second = results
    assert first["verified"] and second["verified"]
    assert first["plan"] == second["plan"] and any(first["plan"].values())
    assert first["shapes"] == second["shapes"]
    assert first["shapes"]["conv1.weight"][0] < 16  # something was pruned
    assert first["fingerprint"] == second["fingerprint"]


def test_ranks_with_different_weights_are_refused():
    results = _run("l1", perturb=True, steps=0)
    for r in results:
        assert "error" in r, r
        assert "rank(s) 1" in r["error"] and "weights" in r["error"]


def test_single_process_helpers():
    model = TinyResidual()
    assert unwrap_model(nn.DataParallel(model)) is model
    before = weights_fingerprint(model)
    assert torch.equal(before, weights_fingerprint(model))
    with torch.no_grad():
        model.conv1.weight[3, 2, 1, 1] += 1e-6
    assert not torch.equal(before, weights_fingerprint(model))
    assert not torch.equal(plan_fingerprint({0: [1, 2]}), plan_fingerprint({0: [1, 3]}))
    assert not torch.equal(plan_fingerprint({0: [1], 1: [2]}), plan_fingerprint({0: [2], 1: [1]}))
    scores = {3: torch.arange(4.0).numpy()}
    assert (average_across_ranks(scores)[3] == scores[3]).all()  # no process group: unchanged
