"""Activation boundary (AB) distillation.

Heo, Lee, Yun and Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019.

Implements the hinge-like alternative loss (Eq. 5) on pre-ReLU stage outputs with margin
m: with s the (connector-adapted) student response and t the teacher's,

    l = (s + m)^2 * 1[s > -m] * 1[t <= 0] + (s - m)^2 * 1[s <= m] * 1[t > 0],

per stage, stage i with stage i (both networks need as many).  ``reduction``: ``mean`` = averaged
over the stage's elements (Knowledge-Distillation-Zoo); ``weighted_sum`` = the AB authors' code as
RepDistiller keeps it (``distiller_zoo/AB.py``): summed over the elements, divided by the batch
size, times ``3 / 1000`` and times ``2^(i - n + 1)`` for stage i of n (0-based: 1/4, 1/2, 1 on three
stages).  The stages' terms are averaged (``stage_reduce mean``, KD-Zoo's ``/ 3``) or summed
(``stage_reduce sum``, RepDistiller's ``sum(loss_group)``).  The connector (a 1x1 convolution +
batch norm, Sec. 3.3) is inserted only where student and teacher shapes differ.  Used in a first,
initialisation stage (two_stage).
"""

from __future__ import annotations

from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes
from .stages import STAGE_REDUCE_CHOICES


def ab_elements(s: Tensor, t: Tensor, m: float) -> Tensor:
    """The alternative loss of Eq. 5 per element."""
    t_on = (t > 0).to(s.dtype)
    off_part = (s + m).pow(2) * (s > -m).to(s.dtype) * (1.0 - t_on)
    on_part = (s - m).pow(2) * (s <= m).to(s.dtype) * t_on
    return off_part + on_part


def ab_loss(s: Tensor, t: Tensor, m: float) -> Tensor:
    return ab_elements(s, t, m).mean()


@register
class ABLoss(DistillLoss):
    name = "ab"
    paper = (
        "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019"
    )
    defaults = {"lambda_kd": 10.0, "m": 2.0, "reduction": "mean", "stage_reduce": "mean"}
    setting_choices = {"reduction": ("mean", "weighted_sum"), "stage_reduce": STAGE_REDUCE_CHOICES}
    teacher_taps = frozenset({"stages_pre"})
    stagewise = True
    two_stage = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        for i, (s_shape, t_shape) in enumerate(zip(student.stages, teacher.stages)):
            self.adapter(f"stage{i + 1}", s_shape, t_shape)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        m = float(self.settings["m"])
        n = len(student.stages_pre)
        losses = []
        for i, (s, t) in enumerate(zip(student.stages_pre, teacher.stages_pre)):
            s, t = self.adapted(f"stage{i + 1}", s, t.detach())
            if self.settings["reduction"] == "weighted_sum":
                losses.append(ab_elements(s, t, m).sum() / s.shape[0] * (3 / 1000) * 2.0 ** (i - n + 1))
            else:
                losses.append(ab_loss(s, t, m))
        total = sum(losses)
        return total if self.settings["stage_reduce"] == "sum" else total / len(losses)
