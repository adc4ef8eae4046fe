"""Logit regression ("mimic learning").

Ba & Caruana, "Do deep nets really need to be deep?", NeurIPS 2014: the student
regresses the teacher's logits with an L2 loss, Eq. (1) ``1/(2T) sum_t ||g(x_t) - z_t||^2``.
Here the squared error is averaged over all ``B*K`` logit entries (``F.mse_loss``),
the scale the Knowledge-Distillation-Zoo ``lambda_kd`` = 0.1 assumes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes


@register
class LogitsLoss(DistillLoss):
    name = "logits"
    paper = "Ba & Caruana, NeurIPS 2014: Do deep nets really need to be deep?"
    defaults = {"lambda_kd": 0.1}
    teacher_taps = frozenset({"logits"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        return F.mse_loss(student.logits, teacher.logits.detach(), reduction="mean")
