"""CIFAR ShuffleNets as RepDistiller defines them (models/ShuffleNetv1.py ``ShuffleV1``, ShuffleNetv2.py ``ShuffleV2``).

Both start with a 1x1 convolution to 24 channels (batch norm, ReLU) at full resolution and have three
stages that each halve the map: 32x32 inputs give 16/8/4-pixel stages.  The pool before the
classifier is adaptive (RepDistiller's ``avg_pool2d(out, 4)`` is the same global pool on 32x32).
Neither reference initialises its weights: PyTorch's default init, as there.

ShuffleNet v1 (Zhang et al., 2018), 3 groups: stages of 240/480/960 channels with 4/8/4 bottleneck
units.  A unit is a grouped 1x1 convolution to a quarter of its output width, a channel shuffle, a
3x3 depthwise convolution, a grouped 1x1 convolution, each with batch norm; a ReLU follows the first
two (RepDistiller's, the paper has none after the depthwise one) and one more follows the shortcut's
sum.  A stage's first unit has stride 2 and concatenates a 3x3 average pool of its input (its branch
makes out - in channels); the very first unit's first 1x1 is not grouped (24 input channels).

ShuffleNet v2 (Ma et al., 2018), width 1: stages of 116/232/464 channels with 1 down-sampling unit
and 3/7/3 basic units, then a 1x1 convolution to 1024 channels (batch norm, ReLU) before the pool.
The down-sampling unit concatenates two stride-2 branches (depthwise 3x3 + 1x1; 1x1 + depthwise 3x3 +
1x1) and shuffles; the basic unit splits its input in halves, passes the first and transforms the
second (1x1, depthwise 3x3, 1x1; ReLU after the first and last), concatenates and shuffles.

Taps.  RepDistiller's feature lists have the stem, the three stages (before or after their final
ReLU) and the pooled feature: three ``stages``, as for the ResNets.  v1's pre-ReLU stage output is
the last unit's shortcut sum.  In v2 the last ReLU sits on the transformed half only; RepDistiller's
pre-ReLU feature is that unit's concatenation *before* the channel shuffle, in another channel order
than its post-ReLU feature.  Here ``stages_pre`` is shuffled as ``stages`` is, so that
``stages == relu(stages_pre)`` channel for channel (the untouched half is a ReLU output already).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KdpipeError
from .inplace import add_into, relu_
from .taps import FeatureTaps

STEM_CHANNELS = 24


def channel_shuffle(x: Tensor, groups: int) -> Tensor:
    """(N, g*k, H, W): channel i*k + j moves to j*g + i, so the next grouped convolution mixes the groups."""
    n, c, h, w = x.shape
    return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


def conv_bn(in_channels: int, out_channels: int, kernel: int = 1, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class ShuffleUnitV1(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int, groups: int, first_groups: int):
        super().__init__()
        self.stride = stride
        branch = out_channels - in_channels if stride == 2 else out_channels
        mid = branch // 4
        self.first_groups = first_groups
        self.conv1 = conv_bn(in_channels, mid, groups=first_groups)
        self.conv2 = conv_bn(mid, mid, 3, stride, groups=mid)
        self.conv3 = conv_bn(mid, branch, groups=groups)

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        """The unit's output before its final ReLU: branch + input, or [branch, avg-pooled input] when it strides."""
        out = channel_shuffle(relu_(self.conv1(x)), self.first_groups)
        out = self.conv3(relu_(self.conv2(out)))
        if self.stride == 2:
            return torch.cat([out, F.avg_pool2d(x, 3, 2, 1)], 1)
        return add_into(out, x)

    def forward(self, x: Tensor) -> Tensor:
        return relu_(self.forward_pre_relu(x))


class DownUnitV2(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        mid = out_channels // 2
        self.left = nn.Sequential(
            conv_bn(in_channels, in_channels, 3, 2, groups=in_channels),
            conv_bn(in_channels, mid),
        )
        self.right = nn.Sequential(
            conv_bn(in_channels, mid),
            nn.ReLU(inplace=True),
            conv_bn(mid, mid, 3, 2, groups=mid),
            conv_bn(mid, mid),
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.cat([relu_(self.left(x)), relu_(self.right(x))], 1)
        return channel_shuffle(out, 2)


class BasicUnitV2(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.half = half = channels // 2
        self.branch = nn.Sequential(
            conv_bn(half, half), nn.ReLU(inplace=True), conv_bn(half, half, 3, groups=half), conv_bn(half, half)
        )

    def forward_pre_relu(self, x: Tensor) -> Tensor:
        """The unit's output before its final ReLU (which acts on the transformed half only), shuffled."""
        kept, transformed = x[:, : self.half], x[:, self.half :]
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)

    def forward(self, x: Tensor) -> Tensor:
        kept, transformed = x[:, : self.half], x[:, self.half :]
        return channel_shuffle(torch.cat([kept, relu_(self.branch(transformed))], 1), 2)


class Stage(nn.Module):
    def __init__(self, units: list[nn.Module]):
        super().__init__()
        self.units = nn.ModuleList(units)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Returns the stage output before and after its final ReLU."""
        for unit in self.units[:-1]:
            x = unit(x)
        pre = self.units[-1].forward_pre_relu(x)
        return pre, F.relu(pre)


class _CifarShuffleNet(nn.Module):
    """The stem and the forward pass both versions share; ``head`` may add a layer before the pool."""

    def __init__(self, widths: tuple[int, ...]):
        super().__init__()
        self.widths = tuple(widths)
        self.conv1 = nn.Conv2d(3, STEM_CHANNELS, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(STEM_CHANNELS)
        self.stages = nn.ModuleList()

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self.widths

    @property
    def embedding_dim(self) -> int:
        return self.fc.in_features

    def head(self, x: Tensor) -> Tensor:
        return x

    def forward(self, x: Tensor) -> FeatureTaps:
        stem = relu_(self.bn1(self.conv1(x)))
        pres, posts = [], []
        out = stem
        for stage in self.stages:
            pre, out = stage(out)
            pres.append(pre)
            posts.append(out)
        embedding = F.adaptive_avg_pool2d(self.head(out), 1).flatten(1)
        return FeatureTaps(stem, tuple(pres), tuple(posts), embedding, self.fc(embedding))


class CifarShuffleNetV1(_CifarShuffleNet):
    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (240, 480, 960),
        blocks: tuple[int, ...] = (4, 8, 4),
        groups: int = 3,
    ):
        super().__init__(widths)
        in_channels = STEM_CHANNELS
        for s, (width, n) in enumerate(zip(widths, blocks)):
            units = []
            for i in range(n):
                first_groups = 1 if s == 0 and i == 0 else groups  # the stem's 24 channels: no grouping
                units.append(ShuffleUnitV1(in_channels, width, 2 if i == 0 else 1, groups, first_groups))
                in_channels = width
            self.stages.append(Stage(units))
        self.fc = nn.Linear(widths[-1], num_classes)

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the last unit's final batch norm; its output plus the unit's input is the pre-ReLU output.

        RepDistiller's ``get_bn_before_relu`` raises for ShuffleNet; this is the ResNets' choice.
        """
        return [stage.units[-1].conv3[1] for stage in self.stages]


class CifarShuffleNetV2(_CifarShuffleNet):
    def __init__(
        self,
        num_classes: int,
        widths: tuple[int, ...] = (116, 232, 464),
        blocks: tuple[int, ...] = (3, 7, 3),
        head_channels: int = 1024,
    ):
        super().__init__(widths)
        in_channels = STEM_CHANNELS
        for width, n in zip(widths, blocks):
            self.stages.append(Stage([DownUnitV2(in_channels, width)] + [BasicUnitV2(width) for _ in range(n)]))
            in_channels = width
        self.conv2 = nn.Conv2d(widths[-1], head_channels, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(head_channels)
        self.fc = nn.Linear(head_channels, num_classes)

    def head(self, x: Tensor) -> Tensor:
        return relu_(self.bn2(self.conv2(x)))

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """None: half of each stage's pre-ReLU output passes its last unit without a batch norm.

        RepDistiller's ``get_bn_before_relu`` raises too; OFD's ``margin: batch`` needs no batch norms.
        """
        raise KdpipeError(
            "shufflenet_v2 has no batch norm before each stage's last ReLU (half the channels bypass it); "
            "use OFD with margin: batch"
        )
