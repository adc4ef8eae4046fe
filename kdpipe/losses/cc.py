"""Correlation congruence.

Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation congruence for knowledge
distillation", ICCV 2019.  Instance correlation matrices ``C_ij = k(f_i, f_j)`` of the
(L2-normalised) embeddings with the Gaussian RBF kernel approximated by its P-th order
Taylor expansion (Eq. 9-10): ``exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma
f_i.f_j) ~ sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i.f_j)^p``; the correlation
congruence loss (Eq. 6) ``1/n^2 ||C_t - C_s||^2``, i.e. the mean squared difference over
the ``B*B`` entries (Knowledge-Distillation-Zoo scale, ``lambda_kd`` = 100).
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss


def correlation_matrix(f: Tensor, gamma: float, order: int) -> Tensor:
    """Taylor-approximated Gaussian-RBF correlation matrix (B, B) of embeddings ``f`` (B, D)."""
    f = F.normalize(f, p=2, dim=1)
    sim = f @ f.t()
    scale = math.exp(-2 * gamma)
    corr = sim.new_full(sim.shape, scale)  # p = 0 term
    power = sim.new_ones(sim.shape)
    for p in range(1, order + 1):
        power = power * sim
        corr = corr + scale * (2 * gamma) ** p / math.factorial(p) * power
    return corr


@register
class CorrelationCongruenceLoss(DistillLoss):
    name = "cc"
    paper = "Peng et al., ICCV 2019: Correlation congruence for knowledge distillation"
    defaults = {"lambda_kd": 100.0, "gamma": 0.4, "P_order": 2}
    teacher_taps = frozenset({"embedding"})

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        gamma, order = float(self.settings["gamma"]), int(self.settings["P_order"])
        cs = correlation_matrix(student.embedding, gamma, order)
        ct = correlation_matrix(teacher.embedding.detach(), gamma, order)
        return F.mse_loss(cs, ct, reduction="mean")
