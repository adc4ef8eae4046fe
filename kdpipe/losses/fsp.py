"""Flow of solution procedure (FSP) distillation.

Yim, Joo, Bae and Kim, "A Gift from Knowledge Distillation: Fast Optimization, Network
Minimization and Transfer Learning", CVPR 2017.

Implements the FSP matrix (Eq. 1), G_ij(x) = (1 / (h*w)) sum_{s,t} F1_{s,t,i} F2_{s,t,j},
and the FSP loss (Eq. 2) with uniform pair weights: for the consecutive pairs (stem, stage 1),
(stage 1, stage 2), ... of post-ReLU maps -- every stage, as RepDistiller's ``feat[:-1]``
(three pairs for the CIFAR ResNets, four for VGG, MobileNetV2 and ResNet-50) -- the MSE (mean
over B*C1*C2) between the student's and the teacher's FSP matrices, averaged over the pairs
(``stage_reduce mean``, KD-Zoo's ``/ 3``) or summed (``stage_reduce sum``, RepDistiller's
``sum(loss_group)`` in ``helper/pretrain.py``).
Both networks need as many stages (``stagewise``; RepDistiller asserts it too).
When the two maps of a pair differ in spatial size the larger is average-pooled to the
smaller first.  A student tap with another channel count (or size) than the teacher's
passes through an adapter first.  Used in a first, initialisation stage (two_stage).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes
from .stages import STAGE_REDUCE_CHOICES


def fsp_matrix(f1: Tensor, f2: Tensor) -> Tensor:
    """(B, C1, H, W), (B, C2, H', W') -> (B, C1, C2)."""
    h = min(f1.shape[2], f2.shape[2])
    w = min(f1.shape[3], f2.shape[3])
    if tuple(f1.shape[2:]) != (h, w):
        f1 = F.adaptive_avg_pool2d(f1, (h, w))
    if tuple(f2.shape[2:]) != (h, w):
        f2 = F.adaptive_avg_pool2d(f2, (h, w))
    return torch.einsum("bihw,bjhw->bij", f1, f2) / (h * w)


@register
class FSPLoss(DistillLoss):
    name = "fsp"
    paper = (
        "Yim et al., A Gift from Knowledge Distillation: Fast Optimization, Network Minimization "
        "and Transfer Learning, CVPR 2017"
    )
    defaults = {"lambda_kd": 1.0, "stage_reduce": "mean"}
    setting_choices = {"stage_reduce": STAGE_REDUCE_CHOICES}
    teacher_taps = frozenset({"stem", "stages"})
    stagewise = True
    two_stage = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        self.keys = ("stem", *(f"stage{i + 1}" for i in range(len(teacher.stages))))
        s_shapes = (student.stem, *student.stages)
        t_shapes = (teacher.stem, *teacher.stages)
        for key, s_shape, t_shape in zip(self.keys, s_shapes, t_shapes, strict=True):
            self.adapter(key, s_shape, t_shape)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        s_maps = (student.stem, *student.stages)
        t_maps = (teacher.stem, *teacher.stages)
        s_out, t_out = [], []
        for key, s, t in zip(self.keys, s_maps, t_maps, strict=True):
            s, t = self.adapted(key, s, t.detach())
            s_out.append(s)
            t_out.append(t)
        losses = [
            F.mse_loss(fsp_matrix(s_out[i], s_out[i + 1]), fsp_matrix(t_out[i], t_out[i + 1]))
            for i in range(len(self.keys) - 1)
        ]
        total = sum(losses)
        return total if self.settings["stage_reduce"] == "sum" else total / len(losses)
