"""CIFAR ResNets (He et al., 2016, Sec. 4.2): 6n+2 layers of basic blocks, 16/32/64 channels.

Shortcuts that change shape use a 1x1 convolution with batch norm.  The pooling is
adaptive, so inputs of any size work; CIFAR's 32x32 gives 8x8 maps in stage 3.

``stem_width`` gives the first convolution its own width; RepDistiller's ``resnet8x4`` and
``resnet32x4`` (models/resnet.py, ``num_filters=[32, 64, 128, 256]``) are a 32-channel stem
followed by 64/128/256-channel stages, the first stage's first block then projecting 32 to 64
channels with a 1x1 convolution at stride 1.  Their layout, ReLUs and initialisation are
otherwise those of He et al.'s nets here (RepDistiller's ``resnet{depth}`` with
``[16, 16, 32, 64]`` is the same net as ours, parameter for parameter).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init
from .inplace import add_into, relu_
from .taps import FeatureTaps


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        out = relu_(self.bn1(self.conv1(x)))
        return add_into(self.bn2(self.conv2(out)), self.shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return relu_(self.forward_pre_relu(x))


class Stage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            BasicBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(blocks)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the stage output before and after its final ReLU."""
        for block in self.blocks[:-1]:
            x = block(x)
        pre = self.blocks[-1].forward_pre_relu(x)
        return pre, F.relu(pre)


class CifarResNet(nn.Module):
    def __init__(
        self, depth: int, num_classes: int, widths: tuple[int, ...] = (16, 32, 64), stem_width: int | None = None
    ):
        super().__init__()
        if (depth - 2) % 6 != 0:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.depth = depth
        self.widths = widths
        self.stem_width = widths[0] if stem_width is None else stem_width
        self.conv1 = nn.Conv2d(3, self.stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.stem_width)
        stages = []
        in_channels = self.stem_width
        for i, width in enumerate(widths):
            stages.append(Stage(in_channels, width, blocks, 1 if i == 0 else 2))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(widths[-1], num_classes)
        he_init(self)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.widths

    @property
    def embedding_dim(self) -> int:
        return self.widths[-1]

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output (plus the shortcut) is the stage's pre-ReLU output.

        OFD reads the teacher's expected pre-ReLU response distribution from these.
        """
        return [stage.blocks[-1].bn2 for stage in self.stages]

    def forward(self, x: Tensor) -> FeatureTaps:
        stem = relu_(self.bn1(self.conv1(x)))
        pres, posts = [], []
        out = stem
        for stage in self.stages:
            pre, out = stage(out)
            pres.append(pre)
            posts.append(out)
        embedding = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return FeatureTaps(stem, tuple(pres), tuple(posts), embedding, self.fc(embedding))
