"""Ultra-Fast-Lane-Detection (UFLD, Qin et al. 2020) style row-anchor lane detector.

Attribute names follow the original implementation (``model``, ``pool``, ``cls``, ``aux_header2/3/4``,
``aux_combine``) so its ResNet-18 checkpoints map one to one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.resnet import BasicBlock

from fxprune.models.registry import register_model

__all__ = ["ConvBNReLU", "LaneResNetBackbone", "ParsingNet", "lane_resnet18", "lane_resnet18_narrow"]


class ConvBNReLU(nn.Module):
    """Conv2d (no bias) + BatchNorm2d + ReLU."""

    def __init__(
        self, in_ch: int, out_ch: int, kernel_size: int = 3, padding: int = 1, dilation: int = 1
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, padding=padding, dilation=dilation, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.bn(self.conv(x)))


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """Two torchvision basic blocks (a 1x1 projection on the first when the shape changes)."""
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride, down), BasicBlock(out_ch, out_ch))


class LaneResNetBackbone(nn.Module):
    """ResNet-18 trunk returning the stage 2, 3 and 4 feature maps (strides 8, 16, 32).

    Stage widths are ``width, 2 width, 4 width, 8 width``; ``width=64`` is torchvision's ResNet-18 (same
    parameter names and shapes, same initialisation), smaller widths train on small budgets.
    """

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        self.layer1 = _stage(width, width, 1)
        self.layer2 = _stage(width, 2 * width, 2)
        self.layer3 = _stage(2 * width, 4 * width, 2)
        self.layer4 = _stage(4 * width, 8 * width, 2)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x2 = self.layer2(self.layer1(x))
        x3 = self.layer3(x2)
        x4 = self.layer4(x3)
        return x2, x3, x4


class ParsingNet(nn.Module):
    """UFLD lane detector: row-anchor classification head plus an optional auxiliary segmentation head.

    The classification output has shape ``(N, griding_num + 1, row_anchors, lanes)``; with
    ``use_aux`` the forward returns ``(cls_out, seg_out)`` where ``seg_out`` is
    ``(N, lanes + 1, H / 8, W / 8)``. ``input_size`` is ``(H, W)``, both multiples of 32. ``width`` is
    the trunk's first-stage width (64: ResNet-18); the auxiliary head has ``2 width`` channels.
    """

    def __init__(
        self,
        griding_num: int = 100,
        row_anchors: int = 56,
        lanes: int = 4,
        input_size: tuple[int, int] = (288, 800),
        use_aux: bool = False,
        hidden: int = 2048,
        width: int = 64,
    ) -> None:
        super().__init__()
        height, img_width = input_size
        if height % 32 or img_width % 32:
            raise ValueError(f"input_size must be multiples of 32, got {input_size}")
        self.input_size = (height, img_width)
        self.cls_dim = (griding_num + 1, row_anchors, lanes)
        self.use_aux = use_aux
        self.model = LaneResNetBackbone(width)
        self.pool = nn.Conv2d(8 * width, 8, 1)
        flat = 8 * (height // 32) * (img_width // 32)  # 1800 for 288x800
        total = self.cls_dim[0] * self.cls_dim[1] * self.cls_dim[2]
        self.cls = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, total))
        if use_aux:
            a = 2 * width  # 128 for ResNet-18
            self.aux_header2 = nn.Sequential(*[ConvBNReLU(a, a) for _ in range(4)])
            self.aux_header3 = nn.Sequential(ConvBNReLU(4 * width, a), ConvBNReLU(a, a), ConvBNReLU(a, a))
            self.aux_header4 = nn.Sequential(ConvBNReLU(8 * width, a), ConvBNReLU(a, a))
            self.aux_combine = nn.Sequential(
                ConvBNReLU(3 * a, 2 * a, padding=2, dilation=2),
                ConvBNReLU(2 * a, a, padding=2, dilation=2),
                ConvBNReLU(a, a, padding=2, dilation=2),
                ConvBNReLU(a, a, padding=4, dilation=4),
                nn.Conv2d(a, lanes + 1, 1),
            )
        self._init_head_weights()

    def _init_head_weights(self) -> None:
        heads = [self.cls] + (
            [self.aux_header2, self.aux_header3, self.aux_header4, self.aux_combine] if self.use_aux else []
        )
        for head in heads:
            for m in head.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
                    if m.bias is not None:
                        nn.init.zeros_(m.bias)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0.0, 0.01)
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        x2, x3, fea = self.model(x)
        group_cls = self.cls(torch.flatten(self.pool(fea), 1)).view(-1, *self.cls_dim)
        if not self.use_aux:
            return group_cls
        a2 = self.aux_header2(x2)
        a3 = F.interpolate(self.aux_header3(x3), scale_factor=2, mode="bilinear", align_corners=False)
        a4 = F.interpolate(self.aux_header4(fea), scale_factor=4, mode="bilinear", align_corners=False)
        seg = self.aux_combine(torch.cat([a2, a3, a4], dim=1))
        return group_cls, seg


@register_model("lane_resnet18", input_shape=(1, 3, 288, 800))
def lane_resnet18(
    griding_num: int = 100,
    row_anchors: int = 56,
    lanes: int = 4,
    input_size: tuple[int, int] = (288, 800),
    use_aux: bool = False,
) -> ParsingNet:
    """UFLD ResNet-18 lane detector with TuSimple defaults (100 grid cells, 56 row anchors, 4 lanes)."""
    return ParsingNet(griding_num, row_anchors, lanes, input_size, use_aux)


def lane_resnet18_narrow(
    width: int = 16,
    griding_num: int = 100,
    row_anchors: int = 56,
    lanes: int = 4,
    input_size: tuple[int, int] = (128, 320),
    use_aux: bool = True,
    hidden: int = 256,
) -> ParsingNet:
    """UFLD detector with a ``width``-channel ResNet-18 trunk, by default at 128x320 with the aux head."""
    return ParsingNet(griding_num, row_anchors, lanes, input_size, use_aux, hidden, width)
