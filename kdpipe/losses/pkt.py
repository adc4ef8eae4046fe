"""Probabilistic knowledge transfer.

Passalis & Tefas, "Learning deep representations with probabilistic knowledge
transfer", ECCV 2018.  Conditional probabilities from the cosine-similarity kernel
(Eq. 11): ``p_{i|j} = K(x_i, x_j) / sum_k K(x_k, x_j)`` with ``K = (cos + 1) / 2``,
computed for teacher and student embeddings; the loss is the KL divergence of Eq. (9),
``sum p_t log(p_t / p_s)``, here averaged over all ``B*B`` entries (Knowledge-Distillation-Zoo scale,
``lambda_kd`` = 1e4).  ``eps`` guards the embeddings' norms and both probabilities inside the log:
1e-6 as Knowledge-Distillation-Zoo's ``PKTCosSim``, 1e-7 as RepDistiller's ``PKT``.  Embedding
dimensions may differ.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss


def conditional_probabilities(f: Tensor, eps: float) -> Tensor:
    """Row-normalised ``(cos + 1) / 2`` similarity matrix of the rows of ``f`` (B, D)."""
    f = f / (f.norm(p=2, dim=1, keepdim=True) + eps)
    sim = (f @ f.t() + 1.0) / 2.0
    return sim / sim.sum(dim=1, keepdim=True)


@register
class PKTLoss(DistillLoss):
    name = "pkt"
    paper = "Passalis & Tefas, ECCV 2018: Learning deep representations with probabilistic knowledge transfer"
    revisions = ("2026-11-28: eps 1e-6 by default (KD-Zoo's), was 1e-7 (RepDistiller's)",)
    defaults = {"lambda_kd": 10000.0, "eps": 1e-6}
    teacher_taps = frozenset({"embedding"})

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        eps = self.settings["eps"]
        p_s = conditional_probabilities(student.embedding, eps)
        p_t = conditional_probabilities(teacher.embedding.detach(), eps)
        return torch.mean(p_t * torch.log((p_t + eps) / (p_s + eps)))
