"""A small residual net and a synthetic 10-class task it learns in a second (for training-loop tests)."""

from __future__ import annotations

import copy
import io
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["SmallResNet", "Task", "resume_copy", "train"]


class Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """Stem, two stages of two basic blocks (16 and 32 channels), global pool, linear."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.layer1 = nn.Sequential(Block(16, 16), Block(16, 16))
        self.layer2 = nn.Sequential(Block(16, 32, 2), Block(32, 32))
        self.fc = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.stem(x)))
        return self.fc(x.mean((2, 3)))


class Task:
    """Noisy copies of 10 fixed random 16x16 patterns; batch ``i`` is the same on every call."""

    def __init__(self, seed: int = 0, noise: float = 1.0) -> None:
        self.protos = torch.randn(10, 3, 16, 16, generator=torch.Generator().manual_seed(seed))
        self.noise = noise
        self.seed = seed

    def batch(self, i: int, n: int = 32) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(self.seed * 100_003 + i + 1)
        y = torch.randint(0, 10, (n,), generator=gen)
        return self.protos[y] + self.noise * torch.randn(n, 3, 16, 16, generator=gen), y

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.batch(-7, 600)

    @torch.no_grad()
    def accuracy(self, model: nn.Module) -> float:
        x, y = self.test_set()
        was = model.training
        model.eval()
        acc = (model(x).argmax(1) == y).float().mean().item()
        model.train(was)
        return acc


def train(
    model: nn.Module,
    task: Task,
    steps: int,
    *,
    start: int = 0,
    lr: float = 0.05,
    optimizer: torch.optim.Optimizer | None = None,
    pruner=None,
    until_done: bool = False,
    hook: Callable[[int], None] | None = None,
) -> torch.optim.Optimizer:
    """SGD (momentum 0.9) on batches ``start..start+steps-1``, driving ``pruner`` if given."""
    opt = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for i in range(start, start + steps):
        x, y = task.batch(i)
        loss = F.cross_entropy(model(x), y)
        if pruner is not None:
            loss = loss + pruner.penalty()
        opt.zero_grad()
        loss.backward()
        if pruner is not None:
            pruner.after_backward()
        opt.step()
        if pruner is not None:
            pruner.step()
            if until_done and pruner.done:
                break
        if hook is not None:
            hook(i)
    return opt


def resume_copy(base: nn.Module, model: nn.Module, optimizer, pruner, *args, **kwargs):
    """A fresh copy of ``base`` resumed from ``model``/``optimizer``/``pruner`` through a checkpoint.

    The states go through ``torch.save`` and ``torch.load(weights_only=True)``, as a user's resume does;
    ``args``/``kwargs`` build the new Pruner. Returns ``(model, pruner, optimizer)``.
    """
    import fxprune

    buf = io.BytesIO()
    states = {"model": model.state_dict(), "opt": optimizer.state_dict(), "pruner": pruner.state_dict()}
    torch.save(states, buf)
    buf.seek(0)
    state = torch.load(buf, weights_only=True)
    resumed = copy.deepcopy(base)
    new_pruner = fxprune.Pruner(resumed, *args, **kwargs)
    resumed.load_state_dict(state["model"])
    new_optimizer = torch.optim.SGD(resumed.parameters(), lr=0.01, momentum=0.9)
    new_optimizer.load_state_dict(state["opt"])
    new_pruner.load_state_dict(state["pruner"])
    return resumed, new_pruner, new_optimizer
