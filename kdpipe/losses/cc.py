"""Correlation congruence.

Peng, Jin, Liu, Li, Wu, Liu, Zhou & Zhang, "Correlation congruence for knowledge
distillation", ICCV 2019.  ``correlation``:

* ``taylor`` (Knowledge-Distillation-Zoo): instance correlation matrices ``C_ij = k(f_i, f_j)`` of
  the (L2-normalised) embeddings with the Gaussian RBF kernel approximated by its P-th order
  Taylor expansion (Eq. 9-10): ``exp(-gamma ||f_i - f_j||^2) = exp(-2 gamma) exp(2 gamma
  f_i.f_j) ~ sum_{p=0..P} exp(-2 gamma) (2 gamma)^p / p! (f_i.f_j)^p``; the correlation
  congruence loss (Eq. 6) ``1/n^2 ||C_t - C_s||^2``, i.e. the mean squared difference over the
  ``B*B`` entries (``lambda_kd`` = 100).
* ``embed_pairs`` (RepDistiller's ``Correlation``, code its authors shared): both embeddings pass
  through a learned linear map to ``EMBED_DIM`` = 128 dimensions (``LinearEmbed``, ``--feat_dim``;
  the teacher's map is trained too, with the student), ``d = |e_s - e_t|`` per sample, and the loss
  is ``mean_i sum_k d_{i,k} d_{i+1,k}`` over the ``B - 1`` consecutive pairs of the batch
  (RepDistiller's weight: 0.02).  ``gamma`` and ``P_order`` are not used there.
"""

from __future__ import annotations

import math

import torch.nn.functional as F
from torch import Tensor, nn

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

EMBED_DIM = 128  # RepDistiller's --feat_dim default


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


def adjacent_pairs_loss(e_s: Tensor, e_t: Tensor) -> Tensor:
    """``mean_i sum_k d_{i,k} d_{i+1,k}`` with ``d = |e_s - e_t|`` (B, D); needs B >= 2."""
    d = (e_s - e_t).abs()
    return (d[:-1] * d[1:]).sum(dim=1).mean()


@register
class CorrelationCongruenceLoss(DistillLoss):
    name = "cc"
    paper = "Peng et al., ICCV 2019: Correlation congruence for knowledge distillation"
    defaults = {"lambda_kd": 100.0, "gamma": 0.4, "P_order": 2, "correlation": "taylor"}
    setting_choices = {"correlation": ("taylor", "embed_pairs")}
    teacher_taps = frozenset({"embedding"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        if self.settings["correlation"] == "embed_pairs":
            self.embed_student = nn.Linear(student.embedding, EMBED_DIM)
            self.embed_teacher = nn.Linear(teacher.embedding, EMBED_DIM)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        if self.settings["correlation"] == "embed_pairs":
            return adjacent_pairs_loss(
                self.embed_student(student.embedding), self.embed_teacher(teacher.embedding.detach())
            )
        gamma, order = float(self.settings["gamma"]), int(self.settings["P_order"])
        cs = correlation_matrix(student.embedding, gamma, order)
        ct = correlation_matrix(teacher.embedding.detach(), gamma, order)
        return F.mse_loss(cs, ct, reduction="mean")
