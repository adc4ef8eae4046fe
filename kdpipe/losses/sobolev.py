"""Sobolev training: matching input gradients of the target-class logit.

Czarnecki, Osindero, Jaderberg, Swirszcz and Pascanu, "Sobolev Training for Neural
Networks", NeurIPS 2017.

Implements the derivative-matching term of the Sobolev loss (Eq. 1, first-order term
with l2 loss) for distillation: g = d(sum_b z[b, y_b]) / dx for the student (with
create_graph, so the term trains the student) and for the teacher (detached).

Setting ``grad_norm``:

* ``l2`` (default, Knowledge-Distillation-Zoo's form): each sample's gradient is divided by
  its L2 norm over (C, H, W) (the norm floored at 1e-12) before the comparison;
* ``none`` (the paper's form): the raw gradients are compared.

loss = mean over all B*C*H*W elements of (g_s - g_t)^2, on the (normalised) gradients.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes

GRAD_NORM_EPS = 1e-12  # floor of a gradient's norm (grad_norm l2), as in F.normalize


def target_logit_sum(logits: Tensor, y: Tensor) -> Tensor:
    return logits.gather(1, y.long().view(-1, 1)).sum()


@register
class SobolevLoss(DistillLoss):
    name = "sobolev"
    paper = "Czarnecki et al., Sobolev Training for Neural Networks, NeurIPS 2017"
    defaults = {"lambda_kd": 20.0, "grad_norm": "l2"}
    setting_choices = {"grad_norm": ("l2", "none")}
    teacher_taps = frozenset({"logits"})
    teacher_grad = True
    input_grad = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        x = batch.x
        if not x.requires_grad or not teacher.logits.requires_grad or not student.logits.requires_grad:
            raise KdpipeError(
                "kd_mode sobolev: the input batch must require grad and both forwards must run with autograd enabled"
            )
        # Teacher first, keeping its graph: the teacher taps may share a graph with the student's.
        (g_t,) = torch.autograd.grad(target_logit_sum(teacher.logits, batch.y), x, retain_graph=True)
        (g_s,) = torch.autograd.grad(target_logit_sum(student.logits, batch.y), x, create_graph=True)
        g_t = g_t.detach()
        if self.settings["grad_norm"] == "l2":
            g_s = F.normalize(g_s.flatten(1), p=2, dim=1, eps=GRAD_NORM_EPS)
            g_t = F.normalize(g_t.flatten(1), p=2, dim=1, eps=GRAD_NORM_EPS)
        return F.mse_loss(g_s, g_t)
