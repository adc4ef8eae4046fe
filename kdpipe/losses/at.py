"""Attention transfer.

Zagoruyko & Komodakis, "Paying more attention to attention: improving the performance
of convolutional neural networks via attention transfer", ICLR 2017.  Activation-based
spatial attention ``F(A) = sum_c |A_c|^p`` (Sec. 3.1; here the channel mean, equal after
normalisation), and the loss of Eq. (2): ``|| Q_s/||Q_s||_2 - Q_t/||Q_t||_2 ||`` with
``Q = vec(F(A))``, taken as the squared difference averaged over all ``B*H*W`` entries
(the Knowledge-Distillation-Zoo scale for ``lambda_kd`` = 1000) and, stage i with stage i over the
post-ReLU stages (both networks need as many stages), averaged (``stage_reduce mean``, KD-Zoo's
``/ 3``) or summed (``stage_reduce sum``, RepDistiller's ``sum(loss_group)`` over ``feat[1:-1]``).  Channel counts
may differ; differing spatial sizes are reconciled by average-pooling the larger
(unnormalised) attention map.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes
from .stages import STAGE_REDUCE_CHOICES, reduce_stages


def attention_map(fm: Tensor, p: float) -> Tensor:
    """``mean_c |A|^p`` as (B, 1, H, W), not yet normalised."""
    return fm.abs().pow(p).mean(dim=1, keepdim=True)


@register
class AttentionTransferLoss(DistillLoss):
    name = "at"
    paper = "Zagoruyko & Komodakis, ICLR 2017: Paying more attention to attention"
    defaults = {"lambda_kd": 1000.0, "p": 2.0, "stage_reduce": "mean"}
    setting_choices = {"stage_reduce": STAGE_REDUCE_CHOICES}
    teacher_taps = frozenset({"stages"})
    stagewise = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        self.keys = [f"stage{i + 1}" for i in range(len(student.stages))]
        for key, s_shape, t_shape in zip(self.keys, student.stages, teacher.stages):
            self.adapter(key, s_shape, t_shape, pool_only=True)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        p = float(self.settings["p"])
        losses = []
        for key, fs, ft in zip(self.keys, student.stages, teacher.stages):
            qs, qt = self.adapted(key, attention_map(fs, p), attention_map(ft.detach(), p))
            qs = F.normalize(qs.flatten(1), p=2, dim=1)
            qt = F.normalize(qt.flatten(1), p=2, dim=1)
            losses.append(F.mse_loss(qs, qt, reduction="mean"))
        return reduce_stages(losses, self.settings["stage_reduce"])
