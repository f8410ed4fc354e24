"""VGG-16 / VGG-19 with BatchNorm for CIFAR-10 (32x32 inputs).

The common CIFAR variant: conv3x3-BN-ReLU stacks with five 2x2 max-pools, which leave a 1x1x512
map, then ``flatten`` and a single ``Linear(512, num_classes)`` classifier (no hidden FC layers).
"""

from __future__ import annotations

import torch
from torch import nn

from fxprune.models.registry import register_model

__all__ = ["VGG", "VGG_CONFIGS", "cifar_vgg16", "cifar_vgg19"]

VGG_CONFIGS: dict[str, list[int | str]] = {
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [
        64,
        64,
        "M",
        128,
        128,
        "M",
        256,
        256,
        256,
        256,
        "M",
        512,
        512,
        512,
        512,
        "M",
        512,
        512,
        512,
        512,
        "M",
    ],
}


class VGG(nn.Module):
    """VGG feature extractor (``features``) followed by a linear ``classifier``."""

    def __init__(self, cfg: list[int | str], num_classes: int = 10, in_channels: int = 3) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_channels
        for item in cfg:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                out = int(item)
                layers += [nn.Conv2d(channels, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU()]
                channels = out
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(channels, num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))


@register_model("cifar_vgg16", input_shape=(1, 3, 32, 32))
def cifar_vgg16(num_classes: int = 10) -> VGG:
    """VGG-16 with BatchNorm for 32x32 inputs."""
    return VGG(VGG_CONFIGS["vgg16"], num_classes)


@register_model("cifar_vgg19", input_shape=(1, 3, 32, 32))
def cifar_vgg19(num_classes: int = 10) -> VGG:
    """VGG-19 with BatchNorm for 32x32 inputs."""
    return VGG(VGG_CONFIGS["vgg19"], num_classes)
