"""DIST: knowledge distillation from a stronger teacher.

Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger Teacher", NeurIPS 2022.
Instead of matching probabilities exactly, the student matches the teacher's relations:
with ``Y = softmax(Z / tau)`` (B x C),

* inter-class relation: ``1 - mean_b pearson(Y_s[b, :], Y_t[b, :])`` (each sample's class
  distribution),
* intra-class relation: ``1 - mean_c pearson(Y_s[:, c], Y_t[:, c])`` (each class's
  probabilities across the batch),

``L = tau^2 * (beta * inter + gamma * intra)``.

As the official implementation (hunto/image_classification_sota, the DIST_KD repository's
``classification`` submodule, ``lib/models/losses/dist_kd.py`` lines 4-34; the code the
paper's Appendix A.1 prints): ``pearson(a, b) = sum((a - a_mean)(b - b_mean)) /
(||a - a_mean|| * ||b - b_mean|| + 1e-8)``, both relation terms multiplied by ``tau^2``,
the teacher without gradient.  CIFAR-100 (``configs/strategies/distill/dist_cifar.yaml``:
``kd: dist_t4``, ``ori_loss_weight 1``, ``kd_loss_weight 2``; ``lib/models/losses/kd_loss.py``
lines 69-71: ``DIST(beta=1, gamma=1, tau=4)``): total ``CE + 2 * L`` -- kdpipe's defaults
``lambda_kd 2, beta 1, gamma 1, tau 4`` (the ImageNet recipe is ``tau 1``).

Setting ``logit_stand`` (default ``off``): ``on`` z-scores both logit tensors before the
temperature (Sun et al., CVPR 2024; :mod:`kdpipe.losses.common`).  Its official code has no
DIST variant, so no recommended weights exist for this combination.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes
from .common import LOGIT_STAND_CHOICES, maybe_standardise

PEARSON_EPS = 1e-8  # added to the product of the norms (official code)


def pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b``."""
    a = a - a.mean(1, keepdim=True)
    b = b - b.mean(1, keepdim=True)
    return (a * b).sum(1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_terms(student_logits: Tensor, teacher_logits: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """(inter, intra), each already multiplied by ``tau^2``; the teacher is detached."""
    tau = float(tau)
    y_s = F.softmax(student_logits / tau, dim=1)
    y_t = F.softmax(teacher_logits.detach() / tau, dim=1)
    inter = 1.0 - pearson_rows(y_s, y_t).mean()
    intra = 1.0 - pearson_rows(y_s.t(), y_t.t()).mean()
    return tau * tau * inter, tau * tau * intra


@register
class DISTLoss(DistillLoss):
    name = "dist"
    paper = "Huang et al., NeurIPS 2022: Knowledge Distillation from A Stronger Teacher"
    defaults = {"lambda_kd": 2.0, "beta": 1.0, "gamma": 1.0, "tau": 4.0, "logit_stand": "off"}
    setting_choices = {"logit_stand": LOGIT_STAND_CHOICES}
    teacher_taps = frozenset({"logits"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        s = self.settings
        zs, zt = maybe_standardise(student.logits, teacher.logits.detach(), s["logit_stand"])
        inter, intra = dist_terms(zs, zt, s["tau"])
        return s["beta"] * inter + s["gamma"] * intra
