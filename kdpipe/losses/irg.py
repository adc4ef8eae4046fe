"""Instance relationship graph distillation (IRG).

Liu, Chen, Liu, Wang and Wang (Yufan Liu et al.), "Knowledge Distillation via Instance
Relationship Graph", CVPR 2019.

Implements the IRG loss (Eq. 4) plus the IRG-transformation loss (Eq. 7):

* vertex: MSE between student and teacher logits (mean over elements);
* edge: for stage 2, stage 3 and the embedding, the squared Euclidean distance matrix
  A_ij = ||f_i - f_j||^2 (B x B) divided by its largest entry; MSE between the
  student's and the teacher's matrices; edge = mean over the three taps;
* transformation: within one network, stage 2 is average-pooled to stage 3's H x W and
  stage 3's channels are averaged in groups down to stage 2's count; the per-sample
  squared distance ||a_i - b_i||^2 gives a (B,) vector, divided by its maximum; MSE
  between the student's and the teacher's vectors.

loss = w_irg_vert * vertex + w_irg_edge * edge + w_irg_tran * tran.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes

_EPS = 1e-12


def squared_distance_matrix(f: Tensor) -> Tensor:
    """(B, N) -> (B, B) squared Euclidean distances (Gram form, zero diagonal), over its max."""
    norms = f.pow(2).sum(1)
    d = (norms.unsqueeze(1) + norms.unsqueeze(0) - 2.0 * f @ f.t()).clamp_min(0.0)
    d = d * (1.0 - torch.eye(f.shape[0], dtype=d.dtype, device=d.device))
    return d / d.max().clamp_min(_EPS)


def transformation_vector(stage2: Tensor, stage3: Tensor) -> Tensor:
    """(B,) squared distance between pooled stage 2 and channel-reduced stage 3, over its max."""
    b, c3, h, w = stage3.shape
    c2 = stage2.shape[1]
    a = F.adaptive_avg_pool2d(stage2, (h, w))
    if c3 % c2 == 0:
        r = stage3.reshape(b, c2, c3 // c2, h, w).mean(2)
    else:
        r = F.adaptive_avg_pool3d(stage3.unsqueeze(1), (c2, h, w)).squeeze(1)
    v = (a - r).pow(2).flatten(1).sum(1)
    return v / v.max().clamp_min(_EPS)


@register
class IRGLoss(DistillLoss):
    name = "irg"
    paper = "Liu et al., Knowledge Distillation via Instance Relationship Graph, CVPR 2019"
    defaults = {"lambda_kd": 1.0, "w_irg_vert": 0.1, "w_irg_edge": 5.0, "w_irg_tran": 5.0}
    teacher_taps = frozenset({"stages", "embedding", "logits"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        t_stages = [t.detach() for t in teacher.stages]
        vertex = F.mse_loss(student.logits, teacher.logits.detach())
        pairs = [
            (student.stages[1], t_stages[1]),
            (student.stages[2], t_stages[2]),
            (student.embedding, teacher.embedding.detach()),
        ]
        edge = sum(
            F.mse_loss(squared_distance_matrix(s.flatten(1)), squared_distance_matrix(t.flatten(1))) for s, t in pairs
        ) / len(pairs)
        tran = F.mse_loss(
            transformation_vector(student.stages[1], student.stages[2]),
            transformation_vector(t_stages[1], t_stages[2]),
        )
        st = self.settings
        return st["w_irg_vert"] * vertex + st["w_irg_edge"] * edge + st["w_irg_tran"] * tran
