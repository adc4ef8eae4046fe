"""RepDistiller's CIFAR ResNet-50: torchvision's bottleneck ResNet with a CIFAR stem.

``resnet50`` (RepDistiller models/resnetv2.py ``ResNet50``, mdistiller
mdistiller/models/cifar/resnetv2.py): a 3x3 convolution to 64 channels + batch norm + ReLU (no
max pooling), then four stages of 3/4/6/3 bottleneck blocks with 64/128/256/512 inner and 4x
as many output channels (256/512/1024/2048), strides 1, 2, 2, 2, global average pooling and
the classifier.  A bottleneck block is 1x1 -> 3x3 (strided) -> 1x1 convolutions, each with batch
norm and all but the last with a ReLU; the residual sum is followed by a ReLU.  Shortcuts that
change shape are a strided 1x1 convolution with batch norm.

Four stages, as the reference's feature list (f1..f4): ``stages_pre[i]`` is stage ``i``'s last
residual sum, ``stages[i]`` its ReLU, ``pre_relu_bns()`` each stage's last ``bn3``.  CIFAR's
32x32 gives 32/16/8/4-pixel maps; the pooling is adaptive (as in the reference).

Initialisation as the reference: convolutions Kaiming normal (fan-out, ReLU), batch norms
weight 1 and bias 0 (its ``zero_init_residual`` is off), the classifier PyTorch's default.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init
from .inplace import add_into, relu_
from .taps import FeatureTaps

EXPANSION = 4


class Bottleneck(nn.Module):
    def __init__(self, in_channels: int, planes: int, stride: int):
        super().__init__()
        out_channels = EXPANSION * planes
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride, bias=False),
                nn.BatchNorm2d(out_channels),
            )

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        """The block's output before its final ReLU."""
        out = relu_(self.bn1(self.conv1(x)))
        out = relu_(self.bn2(self.conv2(out)))
        return add_into(self.bn3(self.conv3(out)), self.shortcut(x))

    def forward(self, x: Tensor) -> Tensor:
        return relu_(self.forward_pre_relu(x))


class BottleneckStage(nn.Module):
    def __init__(self, in_channels: int, planes: int, blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            Bottleneck(in_channels if i == 0 else EXPANSION * planes, planes, stride if i == 0 else 1)
            for i in range(blocks)
        )

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the stage output before and after its final ReLU."""
        for block in self.blocks[:-1]:
            x = block(x)
        pre = self.blocks[-1].forward_pre_relu(x)
        return pre, F.relu(pre)


class BottleneckResNet(nn.Module):
    def __init__(
        self,
        blocks: tuple[int, ...],
        num_classes: int,
        planes: tuple[int, ...] = (64, 128, 256, 512),
        stem_width: int = 64,
    ):
        super().__init__()
        self.blocks = blocks
        self.widths = tuple(EXPANSION * p for p in planes)
        self.conv1 = nn.Conv2d(3, stem_width, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem_width)
        stages = []
        in_channels = stem_width
        for i, (n, p) in enumerate(zip(blocks, planes)):
            stages.append(BottleneckStage(in_channels, p, n, 1 if i == 0 else 2))
            in_channels = EXPANSION * p
        self.stages = nn.ModuleList(stages)
        self.fc = nn.Linear(self.widths[-1], num_classes)
        he_init(self)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.widths

    @property
    def embedding_dim(self) -> int:
        return self.widths[-1]

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output (plus the shortcut) is the stage's pre-ReLU output."""
        return [stage.blocks[-1].bn3 for stage in self.stages]

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
