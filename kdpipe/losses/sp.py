"""Similarity-preserving knowledge distillation.

Tung & Mori, "Similarity-preserving knowledge distillation", ICCV 2019.  For each
stage, ``G = Q Q^T`` with ``Q`` the (B, C*H*W) reshaped activation map, row-wise
L2-normalised (Eq. 2-3); the loss of Eq. (4) is ``1/b^2 ||G_s - G_t||_F^2`` (the mean
squared difference over the ``B*B`` entries), here averaged over the post-ReLU stages,
stage i with stage i (Knowledge-Distillation-Zoo scale, ``lambda_kd`` = 3000).  Any channel
counts and sizes; both networks need as many stages.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss


def similarity_matrix(fm: Tensor) -> Tensor:
    """Row-normalised batch Gram matrix (B, B) of a (B, ...) activation tensor."""
    q = fm.flatten(1)
    return F.normalize(q @ q.t(), p=2, dim=1)


@register
class SimilarityPreservingLoss(DistillLoss):
    name = "sp"
    paper = "Tung & Mori, ICCV 2019: Similarity-preserving knowledge distillation"
    defaults = {"lambda_kd": 3000.0}
    teacher_taps = frozenset({"stages"})
    stagewise = True

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for fs, ft in zip(student.stages, teacher.stages):
            gs, gt = similarity_matrix(fs), similarity_matrix(ft.detach())
            b = gs.shape[0]
            losses.append((gs - gt).pow(2).sum() / (b * b))
        return torch.stack(losses).mean()
