"""Neuron selectivity transfer.

Huang & Wang, "Like what you like: knowledge distill via neuron selectivity transfer",
arXiv:1707.01219, 2017.  Each channel's spatial response, L2-normalised, is a sample of
the network's neuron-selectivity distribution; the loss is the squared MMD of Eq. (4)
with the polynomial kernel ``k(x, y) = (x^T y + c)^d``, ``d = 2``, ``c = 0`` (Sec. 3.3):
``mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') - 2 mean_{i,j} k(s_i, t_j)`` per
sample, averaged over the batch (Knowledge-Distillation-Zoo scale, ``lambda_kd`` = 10).
Taken on the last post-ReLU stage; channel counts may differ, the larger spatial map is
average-pooled to the smaller (no parameters).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

STAGE = 2


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Per sample ``mean_{i,j} (a_i . b_j)^2`` for a (B, Ca, N), b (B, Cb, N): shape (B,)."""
    return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


@register
class NeuronSelectivityLoss(DistillLoss):
    name = "nst"
    paper = "Huang & Wang, 2017: Like what you like: knowledge distill via neuron selectivity transfer"
    defaults = {"lambda_kd": 10.0}
    teacher_taps = frozenset({"stages"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        self.key = f"stages[{STAGE}]"
        self.adapter(self.key, student.stages[STAGE], teacher.stages[STAGE], pool_only=True)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        fs, ft = self.adapted(self.key, student.stages[STAGE], teacher.stages[STAGE].detach())
        s = F.normalize(fs.flatten(2), p=2, dim=2)
        t = F.normalize(ft.flatten(2), p=2, dim=2)
        mmd2 = _poly_kernel_mean(s, s) + _poly_kernel_mean(t, t) - 2 * _poly_kernel_mean(s, t)
        return mmd2.mean()
