"""VID: variational information distillation.

Ahn, Hu, Damianou, Lawrence and Dai, "Variational Information Distillation for Knowledge
Transfer", CVPR 2019.  Maximising a variational lower bound on the mutual information
between teacher and student features reduces to minimising the negative log-likelihood
of the teacher feature under a Gaussian whose mean is regressed from the student
(the paper's variational bound, Sec. 3, with the heteroscedastic mean ``mu(s)`` and a per-channel
variance ``sigma_c^2 = softplus(alpha_c) + eps``, ``eps`` 1e-6 as Knowledge-Distillation-Zoo, 1e-5 as
RepDistiller)::

    -log q(t | s) = sum_{c,h,w}  log sigma_c + (t_{c,h,w} - mu_{c,h,w}(s))^2 / (2 sigma_c^2)  + const

Here, per post-ReLU stage, the element-wise term ``0.5 * (log sigma_c^2 + (t - mu)^2 / sigma_c^2)``
is averaged over all elements (batch, channel, position); the stages, stage i with stage i
(both networks need as many), are averaged (``stage_reduce mean``, KD-Zoo's ``/ 3``) or summed
(``stage_reduce sum``, RepDistiller's ``sum(loss_group)``).  ``regressor``, the 1x1 convolutions
of ``mu``: ``kdzoo`` = no biases, weights Kaiming-normal (fan_out, ReLU gain), as
Knowledge-Distillation-Zoo's ``VID``; ``plain`` = no biases, torch's default initialisation, as
RepDistiller's ``VID`` (``conv1x1(..., bias=False)``, not re-initialised); ``bias`` = biases and
torch's default initialisation (kdpipe's default before 2026-11-27).
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes
from .stages import STAGE_REDUCE_CHOICES, reduce_stages


def inverse_softplus(y: float) -> float:
    """x with softplus(x) = y (y > 0), stable for large and small y."""
    if y <= 0:
        raise ValueError(f"inverse_softplus needs a positive value, got {y}")
    return y + math.log(-math.expm1(-y))


class VIDRegressor(nn.Module):
    """mu(s) = Conv1x1(C_s->M) -> ReLU -> Conv1x1(M->M) -> ReLU -> Conv1x1(M->C_t), plus the variance."""

    def __init__(self, c_student: int, c_teacher: int, mid: int, init_var: float, form: str, eps: float):
        super().__init__()
        self.eps = eps
        bias = form == "bias"
        self.mean = nn.Sequential(
            nn.Conv2d(c_student, mid, 1, bias=bias),
            nn.ReLU(),
            nn.Conv2d(mid, mid, 1, bias=bias),
            nn.ReLU(),
            nn.Conv2d(mid, c_teacher, 1, bias=bias),
        )
        if form == "kdzoo":
            for conv in self.mean[::2]:
                nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
        self.alpha = nn.Parameter(torch.full((c_teacher,), inverse_softplus(init_var - eps)))

    def variance(self) -> Tensor:
        return F.softplus(self.alpha) + self.eps


@register
class VIDLoss(DistillLoss):
    name: ClassVar[str] = "vid"
    paper: ClassVar[str] = "Ahn et al., Variational Information Distillation for Knowledge Transfer, CVPR 2019"
    revisions = (
        "2026-11-27: regressor kdzoo by default (no biases, Kaiming-normal fan_out weights, as KD-Zoo),"
        " was bias (biases, torch's default initialisation)",
    )
    defaults: ClassVar[dict[str, Any]] = {
        "lambda_kd": 1.0,
        "sf": 1.0,
        "init_var": 5.0,
        "stage_reduce": "mean",
        "regressor": "kdzoo",
        "eps": 1e-6,
    }
    setting_choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "stage_reduce": STAGE_REDUCE_CHOICES,
        "regressor": ("kdzoo", "plain", "bias"),
    }
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages"})
    stagewise: ClassVar[bool] = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        super().__init__(student, teacher, teacher_model, **settings)
        sf, init_var, eps = float(self.settings["sf"]), float(self.settings["init_var"]), float(self.settings["eps"])
        if init_var <= eps:
            raise KdpipeError(f"kd_mode vid: init_var: got {init_var}; must exceed eps ({eps:g})")
        self.regressors = nn.ModuleList()
        form = self.settings["regressor"]
        for i, (s_shape, t_shape) in enumerate(zip(self.student_shapes.stages, self.teacher_shapes.stages)):
            c_s, c_t = s_shape[0], t_shape[0]
            self.regressors.append(VIDRegressor(c_s, c_t, max(1, round(sf * c_t)), init_var, form, eps))
            # The regressor maps channels; a spatial mismatch is bridged by pooling the larger
            # map (a pooling-only adapter).
            self.adapter(f"stage{i + 1}", tuple(s_shape), tuple(t_shape), pool_only=True)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for i, regressor in enumerate(self.regressors):
            mu = regressor.mean(student.stages[i])
            mu, t = self.adapted(f"stage{i + 1}", mu, teacher.stages[i].detach())
            var = regressor.variance().view(1, -1, 1, 1)
            nll = 0.5 * (torch.log(var) + (t - mu) ** 2 / var)
            losses.append(nll.mean())
        return reduce_stages(losses, self.settings["stage_reduce"])
