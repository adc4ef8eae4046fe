"""Neuron selectivity transfer.

Huang & Wang, "Like what you like: knowledge distill via neuron selectivity transfer",
arXiv:1707.01219, 2017.  Each channel's spatial response, L2-normalised, is a sample of
the network's neuron-selectivity distribution; the loss is the squared MMD of Eq. (4)
with the polynomial kernel ``k(x, y) = (x^T y + c)^d``, ``d = 2``, ``c = 0`` (Sec. 3.3):
``mean_{i,i'} k(s_i, s_i') + mean_{j,j'} k(t_j, t_j') - 2 mean_{i,j} k(s_i, t_j)`` per
sample, averaged over the batch (Knowledge-Distillation-Zoo scale, ``lambda_kd`` = 10).
Which post-ReLU stages (``stages``): ``stage3``, the third stage of both networks
(Knowledge-Distillation-Zoo's ``rb3``, the last of the CIFAR ResNets; any stage counts), or
``all``, stage i with stage i (RepDistiller's ``feat[1:-1]``; both networks need as many
stages), combined by ``stage_reduce`` (``mean``; RepDistiller's ``sum``).  Channel counts may
differ; the larger spatial map of a pair is average-pooled to the smaller (no parameters).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes
from .stages import STAGE_REDUCE_CHOICES, reduce_stages

STAGE = 2  # stage3: the index of KD-Zoo's rb3


def _poly_kernel_mean(a: Tensor, b: Tensor) -> Tensor:
    """Per sample ``mean_{i,j} (a_i . b_j)^2`` for a (B, Ca, N), b (B, Cb, N): shape (B,)."""
    return (a @ b.transpose(1, 2)).pow(2).mean(dim=(1, 2))


def nst_term(fs: Tensor, ft: Tensor) -> Tensor:
    """The batch mean of the squared MMD between two equally sized maps' normalised channel responses."""
    s = F.normalize(fs.flatten(2), p=2, dim=2)
    t = F.normalize(ft.flatten(2), p=2, dim=2)
    mmd2 = _poly_kernel_mean(s, s) + _poly_kernel_mean(t, t) - 2 * _poly_kernel_mean(s, t)
    return mmd2.mean()


@register
class NeuronSelectivityLoss(DistillLoss):
    name = "nst"
    paper = "Huang & Wang, 2017: Like what you like: knowledge distill via neuron selectivity transfer"
    defaults = {"lambda_kd": 10.0, "stages": "stage3", "stage_reduce": "mean"}
    setting_choices = {"stages": ("stage3", "all"), "stage_reduce": STAGE_REDUCE_CHOICES}
    teacher_taps = frozenset({"stages"})
    stagewise = ("stages", "all")  # the default (stage3) reads one stage of each network

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        self.indices = tuple(range(len(student.stages))) if self.settings["stages"] == "all" else (STAGE,)
        for i in self.indices:
            self.adapter(f"stages[{i}]", student.stages[i], teacher.stages[i], pool_only=True)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for i in self.indices:
            fs, ft = self.adapted(f"stages[{i}]", student.stages[i], teacher.stages[i].detach())
            losses.append(nst_term(fs, ft))
        if len(losses) == 1:
            return losses[0]  # stage3: the one term, unchanged by either reduction
        return reduce_stages(losses, self.settings["stage_reduce"])
