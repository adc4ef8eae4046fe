"""CIFAR MobileNetV2 as RepDistiller defines it (models/mobilenetv2.py ``mobile_half``, its tables' "MobileNetV2").

Sandler et al.'s inverted residuals (1x1 expansion, 3x3 depthwise, linear 1x1 projection, each with
batch norm; the ReLUs are plain ReLUs, not ReLU6) at half width with expansion 6:

    stem  3x3 conv, stride 2, 16 channels (int(32 * 0.5))
    groups (expansion t, channels c, blocks n, first stride s):
          (1, 8, 1, 1) (6, 12, 2, 1) (6, 16, 3, 2) (6, 32, 4, 2) (6, 48, 3, 1) (6, 80, 3, 2) (6, 160, 1, 1)
    head  1x1 conv to 1280 channels (not scaled below width 1), batch norm, ReLU; global average pool

As in RepDistiller, a block keeps its 1x1 expansion convolution even at t = 1 (torchvision drops it),
and a block adds its input when it keeps the shape (stride 1, same channels).  CIFAR's 32x32 gives a
16x16 stem and 2x2 maps before the head.  RepDistiller pools with ``AvgPool2d(input_size // 16)``,
fixed at construction; the pool here is adaptive, the same on 32x32.

Taps.  RepDistiller's feature list has the stem, the outputs of groups 2, 3, 5 and 7, and the pooled
feature; it ignores ``preact`` because every block ends on the linear projection (no ReLU).  The four
``stages`` here are those group outputs (stage 1 = groups 1-2, stage 2 = group 3, stage 3 = groups
4-5, stage 4 = groups 6-7); there is no final ReLU, so ``stages_pre`` holds the very same tensors as
``stages``.  ``pre_relu_bns()`` gives each stage's last projection batch norm (RepDistiller's
``get_bn_before_relu``): in stages 1-3 the block adds its input to that norm's output, in stage 4
(80 -> 160 channels) the norm's output is the stage output.

Init as RepDistiller: convolutions N(0, sqrt(2 / (k*k*out))) (He, fan-out), batch norms 1/0, the
classifier N(0, 0.01) with zero bias.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init
from .inplace import add_into, relu_
from .taps import FeatureTaps

# (channels at width 1, blocks, stride of the first block), as the MobileNetV2 paper's Table 2 but with strides
# 1, 1, 2, 2, 1, 2, 1 for CIFAR; the first group expands by 1, the others by ``expansion``
GROUPS = ((16, 1, 1), (24, 2, 1), (32, 3, 2), (64, 4, 2), (96, 3, 1), (160, 3, 2), (320, 1, 1))
STAGE_GROUPS = ((0, 1), (2,), (3, 4), (5, 6))  # RepDistiller's features follow groups 2, 3, 5 and 7


class InvertedResidual(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, expansion: int):
        super().__init__()
        hidden = in_channels * expansion
        self.conv = nn.Sequential(
            nn.Conv2d(in_channels, hidden, 1, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
            nn.BatchNorm2d(hidden),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.residual = stride == 1 and in_channels == out_channels

    def forward(self, x: Tensor) -> Tensor:
        out = self.conv(x)
        return add_into(out, x) if self.residual else out


class CifarMobileNetV2(nn.Module):
    def __init__(self, num_classes: int, width: float = 0.5, expansion: int = 6):
        super().__init__()
        channels = int(32 * width)
        self.conv1 = nn.Conv2d(3, channels, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        groups = []
        for g, (c, n, s) in enumerate(GROUPS):
            blocks = []
            for i in range(n):
                out_channels = int(c * width)
                blocks.append(InvertedResidual(channels, out_channels, s if i == 0 else 1, expansion if g else 1))
                channels = out_channels
            groups.append(blocks)
        self.stages = nn.ModuleList(nn.Sequential(*(b for g in members for b in groups[g])) for members in STAGE_GROUPS)
        self._widths = tuple(stage[-1].conv[-1].num_features for stage in self.stages)
        self.head_channels = int(1280 * width) if width > 1 else 1280
        self.conv2 = nn.Conv2d(channels, self.head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(self.head_channels)
        self.fc = nn.Linear(self.head_channels, num_classes)
        he_init(self, linear_std=0.01)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self._widths

    @property
    def embedding_dim(self) -> int:
        return self.head_channels

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the last block's projection batch norm (plus the block's input where it has a shortcut).

        The stages end without a ReLU; these norms still describe their outputs' distribution, as
        RepDistiller's ``get_bn_before_relu`` uses them for OFD.
        """
        return [stage[-1].conv[-1] for stage in self.stages]

    def forward(self, x: Tensor) -> FeatureTaps:
        stem = relu_(self.bn1(self.conv1(x)))
        outs = []
        out = stem
        for stage in self.stages:
            out = stage(out)
            outs.append(out)
        head = relu_(self.bn2(self.conv2(out)))
        embedding = F.adaptive_avg_pool2d(head, 1).flatten(1)
        return FeatureTaps(stem, tuple(outs), tuple(outs), embedding, self.fc(embedding))
