"""Similarity-preserving knowledge distillation.

Tung & Mori, "Similarity-preserving knowledge distillation", ICCV 2019.  For each
stage, ``G = Q Q^T`` with ``Q`` the (B, C*H*W) reshaped activation map, row-wise
L2-normalised (Eq. 2-3); the loss of Eq. (4) is ``1/b^2 ||G_s - G_t||_F^2`` (the mean
squared difference over the ``B*B`` entries), on the post-ReLU stages (``lambda_kd`` = 3000).
Which stages (``stages``): ``all``, stage i with stage i, averaged (Knowledge-Distillation-Zoo;
both networks need as many stages), or ``last``, the last stage of each network only
(RepDistiller's ``[feat[-2]]``, any stage counts).  ``stage_reduce`` ``sum`` sums the stages'
terms instead (the same with one stage).  Any channel counts and sizes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss
from .stages import STAGE_REDUCE_CHOICES, reduce_stages


def similarity_matrix(fm: Tensor) -> Tensor:
    """Row-normalised batch Gram matrix (B, B) of a (B, ...) activation tensor."""
    q = fm.flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1)


@register
class SimilarityPreservingLoss(DistillLoss):
    name = "sp"
    paper = "Tung & Mori, ICCV 2019: Similarity-preserving knowledge distillation"
    defaults = {"lambda_kd": 3000.0, "stages": "all", "stage_reduce": "mean"}
    setting_choices = {"stages": ("all", "last"), "stage_reduce": STAGE_REDUCE_CHOICES}
    teacher_taps = frozenset({"stages"})
    stagewise = ("stages", "all")  # RepDistiller's form (last) reads one stage of each network

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        pairs = zip(student.stages, teacher.stages)
        if self.settings["stages"] == "last":
            pairs = [(student.stages[-1], teacher.stages[-1])]
        losses = []
        for fs, ft in pairs:
            gs, gt = similarity_matrix(fs), similarity_matrix(ft.detach())
            b = gs.shape[0]
            losses.append((gs - gt).pow(2).sum() / (b * b))
        return reduce_stages(losses, self.settings["stage_reduce"])
