"""Activation boundary (AB) distillation.

Heo, Lee, Yun and Choi, "Knowledge Transfer via Distillation of Activation Boundaries
Formed by Hidden Neurons", AAAI 2019.

Implements the hinge-like alternative loss (Eq. 5) on pre-ReLU stage outputs with margin
m: with s the (connector-adapted) student response and t the teacher's,

    l = (s + m)^2 * 1[s > -m] * 1[t <= 0] + (s - m)^2 * 1[s <= m] * 1[t > 0],

averaged over all elements of a stage, then over the stages, stage i with stage i (both
networks need as many).  The connector (a
1x1 convolution + batch norm, Sec. 3.3) is inserted only where student and teacher
shapes differ.  Used in a first, initialisation stage (two_stage).
"""

from __future__ import annotations

from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes


def ab_loss(s: Tensor, t: Tensor, m: float) -> Tensor:
    t_on = (t > 0).to(s.dtype)
    off_part = (s + m).pow(2) * (s > -m).to(s.dtype) * (1.0 - t_on)
    on_part = (s - m).pow(2) * (s <= m).to(s.dtype) * t_on
    return (off_part + on_part).mean()


@register
class ABLoss(DistillLoss):
    name = "ab"
    paper = (
        "Heo et al., Knowledge Transfer via Distillation of Activation Boundaries Formed by Hidden Neurons, AAAI 2019"
    )
    defaults = {"lambda_kd": 10.0, "m": 2.0}
    teacher_taps = frozenset({"stages_pre"})
    stagewise = True
    two_stage = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        for i, (s_shape, t_shape) in enumerate(zip(student.stages, teacher.stages)):
            self.adapter(f"stage{i + 1}", s_shape, t_shape)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        m = float(self.settings["m"])
        losses = []
        for i, (s, t) in enumerate(zip(student.stages_pre, teacher.stages_pre)):
            s, t = self.adapted(f"stage{i + 1}", s, t.detach())
            losses.append(ab_loss(s, t, m))
        return sum(losses) / len(losses)
