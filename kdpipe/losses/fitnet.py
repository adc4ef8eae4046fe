"""FitNets hint loss.

Romero, Ballas, Kahou, Chassang, Gatta & Bengio, "FitNets: hints for thin deep nets",
ICLR 2015, Eq. (3): ``L_HT = 1/2 || u_h(x) - r(v_g(x)) ||^2`` between the teacher's hint
layer ``u_h`` and the regressed student guided layer ``r(v_g)``.  Hint/guided layer: the
post-ReLU output of stage ``hint_stage`` (1-based, the same in both networks): 3 as
Knowledge-Distillation-Zoo (``rb3``), 2 as RepDistiller (``--hint_layer 2`` indexes ``feat``,
whose ``feat[0]`` is the stem).  The regressor ``r`` (``regressor``): ``adapter`` = the shape
adapter (1x1 conv + BN, average pooling of the larger map) only where the shapes differ
(Knowledge-Distillation-Zoo has none: its pairs match), or ``convreg`` = RepDistiller's
``ConvReg``, always present: a convolution with bias -- 3x3 stride 2 when the student map is
twice the teacher's size, 4x4 stride-2 transposed when half, else ``(1 + H_s - H_t) x
(1 + W_s - W_t)`` (1x1 on equal sizes) -- then BN and ReLU.  The squared error is averaged over
all elements (``nn.MSELoss``, both references; ``lambda_kd`` = 0.1, RepDistiller's 100).
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes


class ConvRegressor(nn.Module):
    """RepDistiller's FitNet regressor (``models/util.py`` ``ConvReg``): student map -> teacher map's shape."""

    def __init__(self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], mode: str):
        super().__init__()
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        if hs == 2 * ht:
            conv: nn.Module = nn.Conv2d(cs, ct, kernel_size=3, stride=2, padding=1)
        elif 2 * hs == ht:
            conv = nn.ConvTranspose2d(cs, ct, kernel_size=4, stride=2, padding=1)
        elif hs >= ht and ws >= wt:
            conv = nn.Conv2d(cs, ct, kernel_size=(1 + hs - ht, 1 + ws - wt))
        else:
            raise KdpipeError(
                f"kd_mode {mode}: regressor convreg: a {hs}x{ws} student map cannot be regressed to the teacher's "
                f"{ht}x{wt} (ConvReg needs the student's size twice, half, or at least the teacher's)"
            )
        self.body = nn.Sequential(conv, nn.BatchNorm2d(ct), nn.ReLU())

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


@register
class FitNetLoss(DistillLoss):
    name = "fitnet"
    paper = "Romero et al., ICLR 2015: FitNets: hints for thin deep nets"
    defaults = {"lambda_kd": 0.1, "hint_stage": 3, "regressor": "adapter"}
    setting_choices = {"regressor": ("adapter", "convreg")}
    teacher_taps = frozenset({"stages"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        hint_stage = self.settings["hint_stage"]  # an integer >= 1 (DistillLoss checked it against its option)
        n_stages = min(len(student.stages), len(teacher.stages))
        if hint_stage > n_stages:
            raise KdpipeError(
                f"kd_mode {self.name}: hint_stage: got {hint_stage}; the teacher has {len(teacher.stages)} stages "
                f"and the student {len(student.stages)}, so it must be between 1 and {n_stages}"
            )
        self.stage = hint_stage - 1
        self.key = f"stages[{self.stage}]"
        s_shape, t_shape = student.stages[self.stage], teacher.stages[self.stage]
        self.regressor: nn.Module | None = None
        if self.settings["regressor"] == "convreg":
            self.regressor = ConvRegressor(s_shape, t_shape, self.name)
        else:
            self.adapter(self.key, s_shape, t_shape)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        fs, ft = student.stages[self.stage], teacher.stages[self.stage].detach()
        if self.regressor is not None:
            fs = self.regressor(fs)
        else:
            fs, ft = self.adapted(self.key, fs, ft)
        return F.mse_loss(fs, ft, reduction="mean")
