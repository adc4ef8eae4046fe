"""Soft targets ("knowledge distillation").

Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network", NIPS Deep
Learning Workshop 2015 (arXiv:1503.02531): the student matches the teacher's
temperature-softened class distribution ``q_i = exp(z_i/T) / sum_j exp(z_j/T)`` (Eq. 1);
the soft-target cross-entropy's gradients scale as ``1/T^2``, so the term is multiplied
by ``T^2`` (Sec. 2).  Implemented as ``T^2 * KL(softmax(z_t/T) || softmax(z_s/T))``,
summed over classes and averaged over the batch.

Setting ``logit_stand`` (default ``off``, Hinton's KD unchanged): ``on`` z-scores each
sample's logits, teacher's and student's separately, before the temperature (Sun et al.,
CVPR 2024; see :mod:`kdpipe.losses.common`).  The official code's recommended KD recipe
with it is a base temperature ``T 2`` and a KD weight of 9 -- next to a cross-entropy weight
of 0.1 (``mdistiller/engine/cfg.py`` of sunshangquan/logit-standardization-KD:
``KD.TEMPERATURE 2``, ``CE_WEIGHT 0.1``, ``KD_WEIGHT 9``; README: ``--logit-stand
--base-temp 2 --kd-weight 9``, which leaves ``CE_WEIGHT`` at 0.1): in kdpipe ``--logit_stand on
--T 2 --lambda_kd 9 --ce_weight 0.1``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes
from .common import LOGIT_STAND_CHOICES, maybe_standardise


def soft_target_loss(student_logits: Tensor, teacher_logits: Tensor, T: float) -> Tensor:
    """``T^2 * mean_b sum_k p_t log(p_t / p_s)`` with ``p = softmax(z / T)``; the teacher is detached."""
    T = float(T)
    log_p_s = F.log_softmax(student_logits / T, dim=1)
    log_p_t = F.log_softmax(teacher_logits.detach() / T, dim=1)
    kl = F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True)
    return kl * (T * T)


@register
class SoftTargetLoss(DistillLoss):
    name = "st"
    paper = "Hinton, Vinyals & Dean, 2015: Distilling the knowledge in a neural network"
    defaults = {"lambda_kd": 0.1, "T": 4.0, "logit_stand": "off"}
    setting_choices = {"logit_stand": LOGIT_STAND_CHOICES}
    teacher_taps = frozenset({"logits"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        zs, zt = maybe_standardise(student.logits, teacher.logits.detach(), self.settings["logit_stand"])
        return soft_target_loss(zs, zt, self.settings["T"])
