"""CIFAR ResNet-20/32/44/56/110 (He et al. 2016) with the parameter-free option-A shortcut.

Module names match the widely used CIFAR-10 checkpoints (``conv1``, ``bn1``, ``layer1.0.conv1``,
..., ``linear``), so their state dicts load strictly through :func:`load_cifar_checkpoint`.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from fxprune.models.checkpoint import load_state_dict_checked
from fxprune.models.registry import register_model

__all__ = [
    "BasicBlock",
    "CifarResNet",
    "ShortcutA",
    "cifar_resnet20",
    "cifar_resnet32",
    "cifar_resnet44",
    "cifar_resnet56",
    "cifar_resnet110",
    "load_cifar_checkpoint",
]

CIFAR_INPUT_SHAPE = (1, 3, 32, 32)


class ShortcutA(nn.Module):
    """Option-A shortcut: subsample by 2 and zero-pad ``planes // 4`` channels on each side."""

    def __init__(self, planes: int) -> None:
        super().__init__()
        self.pad = planes // 4

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def extra_repr(self) -> str:
        return f"pad={self.pad}"


class BasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with a residual connection."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.shortcut: nn.Module = (
            ShortcutA(planes) if stride != 1 or in_planes != planes else nn.Sequential()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """CIFAR ResNet with ``blocks_per_stage`` BasicBlocks in each of its three stages."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10) -> None:
        super().__init__()
        self.in_planes = 16
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._make_layer(16, blocks_per_stage, stride=1)
        self.layer2 = self._make_layer(32, blocks_per_stage, stride=2)
        self.layer3 = self._make_layer(64, blocks_per_stage, stride=2)
        self.linear = nn.Linear(64, num_classes)
        self._init_weights()

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = []
        for block_stride in [stride] + [1] * (blocks - 1):
            layers.append(BasicBlock(self.in_planes, planes, block_stride))
            self.in_planes = planes
        return nn.Sequential(*layers)

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(m.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        out = F.adaptive_avg_pool2d(out, 1)
        return self.linear(torch.flatten(out, 1))


def _depth_to_blocks(depth: int) -> int:
    if (depth - 2) % 6 != 0:
        raise ValueError(f"CIFAR ResNet depth must be 6n + 2, got {depth}")
    return (depth - 2) // 6


@register_model("cifar_resnet20", input_shape=CIFAR_INPUT_SHAPE)
def cifar_resnet20(num_classes: int = 10) -> CifarResNet:
    """ResNet-20 for CIFAR (3 blocks per stage, 0.27 M parameters)."""
    return CifarResNet(_depth_to_blocks(20), num_classes)


@register_model("cifar_resnet32", input_shape=CIFAR_INPUT_SHAPE)
def cifar_resnet32(num_classes: int = 10) -> CifarResNet:
    """ResNet-32 for CIFAR (5 blocks per stage)."""
    return CifarResNet(_depth_to_blocks(32), num_classes)


@register_model("cifar_resnet44", input_shape=CIFAR_INPUT_SHAPE)
def cifar_resnet44(num_classes: int = 10) -> CifarResNet:
    """ResNet-44 for CIFAR (7 blocks per stage)."""
    return CifarResNet(_depth_to_blocks(44), num_classes)


@register_model("cifar_resnet56", input_shape=CIFAR_INPUT_SHAPE)
def cifar_resnet56(num_classes: int = 10) -> CifarResNet:
    """ResNet-56 for CIFAR (9 blocks per stage, 0.85 M parameters)."""
    return CifarResNet(_depth_to_blocks(56), num_classes)


@register_model("cifar_resnet110", input_shape=CIFAR_INPUT_SHAPE)
def cifar_resnet110(num_classes: int = 10) -> CifarResNet:
    """ResNet-110 for CIFAR (18 blocks per stage)."""
    return CifarResNet(_depth_to_blocks(110), num_classes)


def load_cifar_checkpoint(model: nn.Module, path: str | os.PathLike[str]) -> nn.Module:
    """Load a CIFAR ResNet checkpoint (``{"state_dict": ...}``, keys prefixed ``module.``) strictly.

    Raises ``CheckpointError`` (a ``ValueError``) naming missing, unexpected and shape-mismatched
    keys, or saying the file is corrupt. Returns ``model``.
    """
    return load_state_dict_checked(model, path)
