"""The UFLD lane detector with a narrower ResNet-18 trunk, for small budgets (CPU training, tests).

``width`` is the channel count of the first stage (64 in ResNet-18); the stages have ``width``,
``2 width``, ``4 width`` and ``8 width`` channels and the auxiliary head scales with them. Attribute names
and the forward are those of :class:`~fxprune.models.lane.ParsingNet`, so the UFLD targets, loss and
metric apply unchanged; ``width=64, hidden=2048`` is the ResNet-18 model itself.
"""

from __future__ import annotations

from torch import nn
from torchvision.models.resnet import BasicBlock

from fxprune.models.lane import ConvBNReLU, LaneResNetBackbone, ParsingNet

__all__ = ["NarrowLaneBackbone", "NarrowParsingNet", "lane_resnet18_narrow"]


def _stage(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    down = None
    if stride != 1 or in_ch != out_ch:
        down = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))
    return nn.Sequential(BasicBlock(in_ch, out_ch, stride, down), BasicBlock(out_ch, out_ch))


class NarrowLaneBackbone(LaneResNetBackbone):
    """ResNet-18 layout (two basic blocks per stage) with stage widths ``w, 2w, 4w, 8w``."""

    def __init__(self, width: int = 64) -> None:
        nn.Module.__init__(self)
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


class NarrowParsingNet(ParsingNet):
    """:class:`ParsingNet` on a :class:`NarrowLaneBackbone`; the auxiliary head has ``2 width`` channels."""

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
        nn.Module.__init__(self)
        height, img_width = input_size
        if height % 32 or img_width % 32:
            raise ValueError(f"input_size must be multiples of 32, got {input_size}")
        if width < 1:
            raise ValueError(f"width must be a positive channel count, got {width}")
        self.input_size = (height, img_width)
        self.cls_dim = (griding_num + 1, row_anchors, lanes)
        self.use_aux = use_aux
        self.model = NarrowLaneBackbone(width)
        self.pool = nn.Conv2d(8 * width, 8, 1)
        flat = 8 * (height // 32) * (img_width // 32)
        total = self.cls_dim[0] * self.cls_dim[1] * self.cls_dim[2]
        self.cls = nn.Sequential(nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, total))
        if use_aux:
            a = 2 * width
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


def lane_resnet18_narrow(
    width: int = 16,
    griding_num: int = 100,
    row_anchors: int = 56,
    lanes: int = 4,
    input_size: tuple[int, int] = (128, 320),
    use_aux: bool = True,
    hidden: int = 256,
) -> NarrowParsingNet:
    """UFLD detector with a ``width``-channel ResNet-18 trunk, by default at 128x320 with the aux head."""
    return NarrowParsingNet(griding_num, row_anchors, lanes, input_size, use_aux, hidden, width)
