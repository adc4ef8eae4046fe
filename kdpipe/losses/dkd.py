"""Decoupled knowledge distillation (DKD).

Zhao, Cui, Song, Qiu & Liang, "Decoupled Knowledge Distillation", CVPR 2022.  The KD loss
splits into target-class KD (TCKD: KL between the binary distributions ``[p_gt, 1 - p_gt]``
of teacher and student) and non-target-class KD (NCKD: KL between the distributions over
the non-target classes, renormalised), weighted independently (Eq. 8):
``DKD = alpha * TCKD + beta * NCKD``.

As the reference, mdistiller (megvii-research/mdistiller, ``mdistiller/distillers/DKD.py``):

* ``p = softmax(z / T)`` for both; TCKD compares the two sums ``(p * gt_mask).sum`` and
  ``(p * other_mask).sum`` (``log`` of the student's sums, lines 8-20);
* NCKD is ``KL(softmax(z_t/T - 1000 gt) || log_softmax(z_s/T - 1000 gt))`` -- the target
  class pushed out of the softmax by subtracting 1000 (lines 21-31);
* each KL is summed over batch and classes, multiplied by ``T^2`` and divided by the batch
  size (``size_average=False ... * T**2 / B``);
* the whole term is multiplied by ``min(epoch / warmup, 1)`` with mdistiller's 1-based
  epoch (line 72; ``engine/trainer.py`` counts epochs from 1), i.e.
  ``min((e + 1) / warmup, 1)`` with kdpipe's 0-based ``DistillBatch.epoch`` ``e``: 1/20 of the
  term in the first epoch, all of it from epoch 20 (``warmup 0``: no warm-up);
* the teacher runs without gradient.

Defaults (``mdistiller/engine/cfg.py`` lines 162-167): ``CE_WEIGHT 1.0, ALPHA 1.0, BETA 8.0,
T 4.0, WARMUP 20``.  mdistiller's total is ``CE_WEIGHT * CE + warmup * (alpha TCKD + beta
NCKD)``; kdpipe's is ``CE + lambda_kd * L`` with ``L = warmup * (alpha TCKD + beta NCKD)``,
so ``lambda_kd 1.0`` maps it exactly.  The CIFAR-100 configs (``configs/cifar100/dkd/*.yaml``)
override ``BETA`` per pair: 2.0 for resnet56->resnet20 and resnet110->resnet32; 6.0 for
vgg13->vgg8, vgg13->MobileNetV2, wrn_40_2->wrn_16_2 and wrn_40_2->wrn_40_1; the default 8.0
for the others -- set ``beta`` to match a published pair.

Setting ``logit_stand`` (default ``off``): ``on`` z-scores both logit tensors before the
temperature (Sun et al., CVPR 2024; :mod:`kdpipe.losses.common`).  The official code
(sunshangquan/logit-standardization-KD, ``tools/train.py`` lines 115-118) then multiplies
ALPHA and BETA by ``--kd-weight`` (default 9) and sets ``T`` to ``--base-temp`` (default 2):
in kdpipe ``logit_stand on, T 2, lambda_kd 9`` (its logs use kd-weight 9-18, base temperature
2-3 and BETA 2.0 or 8.0 per pair).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes
from .common import LOGIT_STAND_CHOICES, maybe_standardise

MASK_SHIFT = 1000.0  # subtracted from the target logit (after /T) to drop it from the NCKD softmax


def dkd_terms(student_logits: Tensor, teacher_logits: Tensor, y: Tensor, T: float) -> tuple[Tensor, Tensor]:
    """(TCKD, NCKD), each ``T^2 * sum KL / B`` as mdistiller computes them; the teacher is detached."""
    T = float(T)
    teacher_logits = teacher_logits.detach()
    batch = student_logits.shape[0]
    # the one-hot mask by scatter: F.one_hot checks the labels' range on the host (off CUDA), a sync
    gt = torch.zeros_like(student_logits).scatter_(1, y.long().view(-1, 1), 1.0)
    other = 1.0 - gt
    p_s = F.softmax(student_logits / T, dim=1)
    p_t = F.softmax(teacher_logits / T, dim=1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * other).sum(1)], dim=1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * other).sum(1)], dim=1)
    tckd = F.kl_div(torch.log(b_s), b_t, reduction="sum") * (T * T) / batch
    log_q_s = F.log_softmax(student_logits / T - MASK_SHIFT * gt, dim=1)
    q_t = F.softmax(teacher_logits / T - MASK_SHIFT * gt, dim=1)
    nckd = F.kl_div(log_q_s, q_t, reduction="sum") * (T * T) / batch
    return tckd, nckd


def warmup_factor(epoch: int, warmup: int) -> float:
    """``min((epoch + 1) / warmup, 1)`` for kdpipe's 0-based epoch; mdistiller's ``min(epoch / warmup, 1)``, 1-based."""
    if warmup <= 0:
        return 1.0
    return min((int(epoch) + 1) / warmup, 1.0)


@register
class DKDLoss(DistillLoss):
    name = "dkd"
    paper = "Zhao et al., CVPR 2022: Decoupled Knowledge Distillation"
    defaults = {"lambda_kd": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20, "logit_stand": "off"}
    setting_choices = {"logit_stand": LOGIT_STAND_CHOICES}
    teacher_taps = frozenset({"logits"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def capture_key(self, epoch: int) -> tuple:
        return (warmup_factor(epoch, self.settings["warmup"]),)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        s = self.settings
        zs, zt = maybe_standardise(student.logits, teacher.logits.detach(), s["logit_stand"])
        tckd, nckd = dkd_terms(zs, zt, batch.y, s["T"])
        return warmup_factor(batch.epoch, s["warmup"]) * (s["alpha"] * tckd + s["beta"] * nckd)
