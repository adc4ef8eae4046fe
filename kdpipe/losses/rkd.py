"""Relational knowledge distillation (RKD).

Park, Kim, Lu and Cho, "Relational Knowledge Distillation", CVPR 2019.

Implements the distance-wise loss (Eq. 4-5) and the angle-wise loss (Eq. 6-7) on the
embeddings, with the Huber loss (smooth L1, delta = 1) as l_delta:

* psi_D(i, j) = ||e_i - e_j||_2 / mu, mu = mean of ||e_i - e_j|| over the pairs i != j;
  L_D = mean over all B*B entries of smooth_l1(psi_D^s, psi_D^t).
* psi_A(i, j, k) = <u_ij, u_kj>, u_ij = (e_i - e_j) / ||e_i - e_j|| (the zero vector for
  i == j); L_A = mean over all B*B*B entries of smooth_l1(psi_A^s, psi_A^t).

loss = w_dist * L_D + w_angle * L_A.  Both terms are invariant to a positive rescaling
of either network's embeddings, and the embedding widths may differ.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss


def _pairwise_distance(e: Tensor) -> Tensor:
    """(B, D) -> (B, B) Euclidean distances; exactly zero (with zero gradient) on the diagonal."""
    diff = e.unsqueeze(1) - e.unsqueeze(0)
    sq = diff.pow(2).sum(-1)
    positive = sq > 0
    return torch.where(positive, sq.clamp_min(1e-24).sqrt(), torch.zeros_like(sq))


def distance_potential(e: Tensor, eps: float = 1e-12) -> Tensor:
    b = e.shape[0]
    d = _pairwise_distance(e)
    mu = d.sum() / (b * (b - 1))  # the diagonal is zero: mean over i != j
    return d / mu.clamp_min(eps)


def angle_potential(e: Tensor) -> Tensor:
    """psi[i, j, k] = <u_ij, u_kj> with u_ij the unit vector from e_j to e_i."""
    u = F.normalize(e.unsqueeze(1) - e.unsqueeze(0), p=2, dim=2)  # u[i, j] = unit(e_i - e_j); 0 if i == j
    return torch.einsum("ijd,kjd->ijk", u, u)


@register
class RKDLoss(DistillLoss):
    name = "rkd"
    paper = "Park et al., Relational Knowledge Distillation, CVPR 2019"
    defaults = {"lambda_kd": 1.0, "w_dist": 25.0, "w_angle": 50.0}
    teacher_taps = frozenset({"embedding"})

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        s = student.embedding.flatten(1)
        t = teacher.embedding.flatten(1).detach()
        if s.shape[0] < 2:  # no pairs: relations are undefined
            return s.sum() * 0.0
        loss_d = F.smooth_l1_loss(distance_potential(s), distance_potential(t), beta=1.0)
        loss_a = F.smooth_l1_loss(angle_potential(s), angle_potential(t), beta=1.0)
        return self.settings["w_dist"] * loss_d + self.settings["w_angle"] * loss_a
