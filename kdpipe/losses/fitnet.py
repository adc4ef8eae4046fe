"""FitNets hint loss.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: hints for thin deep nets",
ICLR 2015, Eq. (3): ``L_HT = 1/2 || u_h(x) - r(v_g(x)) ||^2`` between the teacher's hint
layer ``u_h`` and the regressed student guided layer ``r(v_g)``.  Hint/guided layer:
the last (third) post-ReLU stage; the regressor ``r`` is the shape adapter (1x1 conv +
BN, average pooling of the larger map) when the shapes differ.  The squared error is
averaged over all elements (Knowledge-Distillation-Zoo scale, ``lambda_kd`` = 0.1).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

STAGE = 2


@register
class FitNetLoss(DistillLoss):
    name = "fitnet"
    paper = "Romero et al., ICLR 2015: FitNets: hints for thin deep nets"
    defaults = {"lambda_kd": 0.1}
    teacher_taps = frozenset({"stages"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        self.key = f"stages[{STAGE}]"
        self.adapter(self.key, student.stages[STAGE], teacher.stages[STAGE])

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        fs, ft = self.adapted(self.key, student.stages[STAGE], teacher.stages[STAGE].detach())
        return F.mse_loss(fs, ft, reduction="mean")
