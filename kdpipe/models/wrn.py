"""Wide residual networks for CIFAR (Zagoruyko and Komodakis, 2016), as RepDistiller defines them.

``wrn_{depth}_{k}`` (RepDistiller models/wrn.py, mdistiller mdistiller/models/cifar/wrn.py):
a 3x3 convolution to 16 channels, then three stages of (depth - 4) / 6 pre-activation blocks
with 16k/32k/64k channels (strides 1, 2, 2), a final batch norm + ReLU, global average pooling
and the classifier.  A block is::

    a   = relu(bn1(x))
    out = conv2(relu(bn2(conv1(a))))          # 3x3 convolutions, the first one strided
    out + x            where the channels stay (identity shortcut on the raw input)
    out + conv1x1(a)   where they change (a strided 1x1 projection of the activated input)

The references' dropout rate is 0 for every named net and is left out.

Taps, on the references' stage split (``forward(is_feat=True)`` lists f0..f3):

* ``stem`` is the first convolution's output; there is no batch norm or ReLU before stage 1.
* A block ends with the residual sum, not a ReLU.  ``stages[i]`` is that raw sum at the end of
  stage ``i`` (the references' ``feats``); ``stages_pre[i]`` is the batch norm that comes next
  applied to it: the first block of stage ``i + 1``'s ``bn1`` or, after stage 3, the final
  ``bn1`` (the references' ``preact_feats``, what OFD and AB read).  The ReLU after that batch
  norm starts the next stage, so ``stages[i]`` is *not* ``relu(stages_pre[i])``;
  ``relu(stages_pre[-1])`` is the map that is pooled into ``embedding``.
* ``pre_relu_bns()`` are those three batch norms (the references' ``get_bn_before_relu``), so
  ``stages_pre[i] == pre_relu_bns()[i](stages[i])``.  Each is applied once per forward pass
  (the references apply the first two a second time for the pre-activation taps, which in
  training updates their running statistics twice per step; here they are not).

Initialisation as the references: convolutions N(0, 2 / (k * k * out_channels)) (Kaiming
normal, fan-out), batch norms weight 1 and bias 0, the classifier's bias 0 (its weight keeps
PyTorch's default).  The pooling is adaptive (the references pool with a fixed 8x8 window),
so inputs of any size work; CIFAR's 32x32 gives 32/16/8-pixel maps.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init
from .inplace import add_into, relu_
from .taps import FeatureTaps


class WideBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False)
        self.shortcut: nn.Module | None = None
        if in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride, bias=False)
        elif stride != 1:
            raise ValueError("a wide block with an identity shortcut cannot be strided")

    def forward(self, x: Tensor, activated: Tensor | None = None) -> Tensor:
        """``activated``: ``relu(bn1(x))`` where the caller has computed it already."""
        a = relu_(self.bn1(x)) if activated is None else activated
        out = self.conv2(relu_(self.bn2(self.conv1(a))))
        return add_into(out, x if self.shortcut is None else self.shortcut(a))


class WideStage(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, blocks: int, stride: int):
        super().__init__()
        self.blocks = nn.ModuleList(
            WideBlock(in_channels if i == 0 else out_channels, out_channels, stride if i == 0 else 1)
            for i in range(blocks)
        )

    def forward(self, x: Tensor, activated: Tensor | None = None) -> Tensor:
        x = self.blocks[0](x, activated)
        for block in self.blocks[1:]:
            x = block(x)
        return x


class WideResNet(nn.Module):
    def __init__(self, depth: int, widen_factor: int, num_classes: int):
        super().__init__()
        if (depth - 4) % 6 != 0:
            raise ValueError(f"wide ResNet depth must be 6n+4, got {depth}")
        blocks = (depth - 4) // 6
        self.depth = depth
        self.widen_factor = widen_factor
        self.widths = (16 * widen_factor, 32 * widen_factor, 64 * widen_factor)
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        stages = []
        in_channels = 16
        for i, width in enumerate(self.widths):
            stages.append(WideStage(in_channels, width, blocks, 1 if i == 0 else 2))
            in_channels = width
        self.stages = nn.ModuleList(stages)
        self.bn1 = nn.BatchNorm2d(self.widths[-1])
        self.fc = nn.Linear(self.widths[-1], num_classes)
        he_init(self)
        nn.init.zeros_(self.fc.bias)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.widths

    @property
    def embedding_dim(self) -> int:
        return self.widths[-1]

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm that turns the stage's output into ``stages_pre`` (then a ReLU
        starts the next stage): stage 2's and 3's first ``bn1``, then the final ``bn1``."""
        return [stage.blocks[0].bn1 for stage in self.stages[1:]] + [self.bn1]

    def forward(self, x: Tensor) -> FeatureTaps:
        stem = self.conv1(x)
        pres, posts = [], []
        out, activated = stem, None
        for stage, bn in zip(self.stages, self.pre_relu_bns()):
            out = stage(out, activated)
            pre = bn(out)
            activated = F.relu(pre)
            pres.append(pre)
            posts.append(out)
        embedding = F.adaptive_avg_pool2d(activated, 1).flatten(1)
        return FeatureTaps(stem, tuple(pres), tuple(posts), embedding, self.fc(embedding))
