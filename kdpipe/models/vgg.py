"""CIFAR VGGs with batch norm, as RepDistiller defines them (models/vgg.py, the ``vgg*_bn`` nets of its tables).

Five groups of 3x3 convolutions (each with a bias, then batch norm and a ReLU), 64/128/256/512/512
channels; VGG's three fully connected layers are replaced by a global average pool and one linear
classifier on the 512 channels:

    vgg8:  1/1/1/1/1 convolutions per group     vgg11: 1/1/2/2/2
    vgg13: 2/2/2/2/2                            vgg16: 2/2/3/3/3
    vgg19: 2/2/4/4/4

A 2x2 max pool precedes groups 2-4.  Group 5 gets one only on 64x64 inputs (RepDistiller pools there
when the input's height is 64, its Tiny-ImageNet size, and not for CIFAR), so on 32x32 groups 4 and
5 both see 4x4 maps.

Taps.  RepDistiller's feature list (``forward(is_feat=True, preact=True)``) is: group 1 after its
ReLU, groups 2-5 before (or after) their final ReLU, and the pooled feature.  Here group 1 is the
``stem`` and groups 2-5 are the four ``stages``: each ends on a batch norm whose output is the stage's
pre-ReLU output (RepDistiller's ``get_bn_before_relu``, four batch norms).  So VGG has four stages,
not the three of the ResNets.

Init as RepDistiller: convolutions N(0, sqrt(2 / (k*k*out))) (He, fan-out) with zero bias, batch
norms 1/0, the classifier N(0, 0.01) with zero bias.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .init import he_init
from .inplace import relu_
from .taps import FeatureTaps

# convolutions per group, by depth (the number of conv layers plus the classifier)
GROUPS: dict[int, tuple[tuple[int, ...], ...]] = {
    8: ((64,), (128,), (256,), (512,), (512,)),
    11: ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    13: ((64, 64), (128, 128), (256, 256), (512, 512), (512, 512)),
    16: ((64, 64), (128, 128), (256,) * 3, (512,) * 3, (512,) * 3),
    19: ((64, 64), (128, 128), (256,) * 4, (512,) * 4, (512,) * 4),
}


def conv_group(in_channels: int, widths: tuple[int, ...]) -> nn.Sequential:
    """3x3 conv (with bias) + batch norm + ReLU per width, the last ReLU left out: the group ends on its batch norm."""
    layers: list[nn.Module] = []
    for i, width in enumerate(widths):
        if i:
            layers.append(nn.ReLU(inplace=True))
        layers += [nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width)]
        in_channels = width
    return nn.Sequential(*layers)


class CifarVGG(nn.Module):
    def __init__(self, depth: int, num_classes: int):
        super().__init__()
        if depth not in GROUPS:
            raise ValueError(f"CIFAR VGG depth must be one of {sorted(GROUPS)}, got {depth}")
        groups = GROUPS[depth]
        self.depth = depth
        self.stem = conv_group(3, groups[0])
        self.stages = nn.ModuleList(conv_group(groups[i - 1][-1], groups[i]) for i in range(1, len(groups)))
        self.fc = nn.Linear(groups[-1][-1], num_classes)
        self._widths = tuple(group[-1] for group in groups[1:])
        he_init(self, linear_std=0.01)

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return self._widths

    @property
    def embedding_dim(self) -> int:
        return self._widths[-1]

    def pre_relu_bns(self) -> list[nn.BatchNorm2d]:
        """Per stage, the batch norm whose output is the stage's pre-ReLU output (no shortcut to add)."""
        return [stage[-1] for stage in self.stages]

    def forward(self, x: Tensor) -> FeatureTaps:
        pool_last = x.shape[-2] == 64  # RepDistiller: the 4th max pool only for 64x64 (Tiny-ImageNet) inputs
        stem = relu_(self.stem(x))
        pres, posts = [], []
        out = stem
        for i, stage in enumerate(self.stages):
            if i < 3 or pool_last:
                out = F.max_pool2d(out, 2)
            pre = stage(out)
            out = F.relu(pre)
            pres.append(pre)
            posts.append(out)
        embedding = F.adaptive_avg_pool2d(out, 1).flatten(1)
        return FeatureTaps(stem, tuple(pres), tuple(posts), embedding, self.fc(embedding))
