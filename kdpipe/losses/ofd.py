"""OFD: overhaul of feature distillation.

Heo, Kim, Yun, Park, Kwak and Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019.  Distils pre-ReLU features through a student connector ``r`` (1x1 conv + BN),
with the teacher target passed through the margin ReLU::

    sigma_m(t) = max(t, m_c),   m_c = E[t_c | t_c < 0]

(the margin is computed from the teacher's batch norm, treating the response as
N(beta_c, gamma_c^2): ``m_c = beta - gamma * phi(beta/gamma) / Phi(-beta/gamma)``), and the
partial L2 distance::

    d_p(T, S) = sum_i  0                  if S_i <= T_i <= 0
                       (T_i - S_i)^2      otherwise

with ``T = sigma_m(teacher pre-ReLU)`` and ``S = r(student pre-ReLU)``.  Per stage the distance
is summed over all elements and divided by batch size and 1000; the three stages are averaged.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

# Below this probability of a negative response the conditional mean is numerically
# unreliable (and irrelevant); the paper's code then uses -3 * std.
MIN_NEGATIVE_MASS = 1e-3


def margin_from_bn(beta: Tensor, gamma: Tensor) -> Tensor:
    """Per-channel E[x | x < 0] for x ~ N(beta, gamma^2), with gamma taken as |gamma|."""
    beta = beta.detach().to(dtype=torch.float64, device="cpu")
    std = gamma.detach().to(dtype=torch.float64, device="cpu").abs().clamp_min(1e-12)
    z = beta / std
    mass = torch.special.ndtr(-z)  # Phi(-beta/gamma) = P(x < 0)
    pdf = torch.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi)
    conditional = beta - std * pdf / mass.clamp_min(1e-300)
    margin = torch.where(mass < MIN_NEGATIVE_MASS, -3.0 * std, conditional)
    return margin.to(torch.float32)


def partial_l2(student: Tensor, target: Tensor) -> Tensor:
    """Element-wise (s - t)^2, zero where s <= t <= 0 (the student is already 'off' enough)."""
    skip = (student <= target) & (target <= 0)
    return (student - target).pow(2) * (~skip).to(student.dtype)


@register
class OFDLoss(DistillLoss):
    name: ClassVar[str] = "ofd"
    paper: ClassVar[str] = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    defaults: ClassVar[dict[str, Any]] = {"lambda_kd": 0.5}
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages_pre"})

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        super().__init__(student, teacher, teacher_model, **settings)
        if teacher_model is None:
            raise KdpipeError("kd_mode ofd: needs the teacher network to read its batch-norm statistics")
        if not hasattr(teacher_model, "pre_relu_bns"):
            raise KdpipeError(
                f"kd_mode ofd: teacher {type(teacher_model).__name__} does not expose pre_relu_bns() for its margins"
            )
        bns = list(teacher_model.pre_relu_bns())
        n_stages = len(self.teacher_shapes.stages)
        if len(bns) != n_stages or len(self.student_shapes.stages) != n_stages:
            raise KdpipeError(
                f"kd_mode ofd: teacher has {len(bns)} pre-ReLU batch norms, {n_stages} teacher and "
                f"{len(self.student_shapes.stages)} student stages; they must agree"
            )
        self.connectors = nn.ModuleList()
        for i, (s_shape, t_shape, bn) in enumerate(zip(self.student_shapes.stages, self.teacher_shapes.stages, bns)):
            c_s, c_t = s_shape[0], t_shape[0]
            if bn.num_features != c_t:
                raise KdpipeError(
                    f"kd_mode ofd: teacher stage {i + 1} batch norm has {bn.num_features} channels, the tap {c_t}"
                )
            conv = nn.Conv2d(c_s, c_t, 1, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_t))  # the paper's code: std sqrt(2 / (k*k*out))
            norm = nn.BatchNorm2d(c_t)
            self.connectors.append(nn.Sequential(conv, norm))
            self.register_buffer(f"margin{i + 1}", margin_from_bn(bn.bias, bn.weight))
            # The connector maps channels; a spatial mismatch is bridged by pooling the larger map.
            self.adapter(f"stage{i + 1}", tuple(s_shape), tuple(t_shape), pool_only=True)

    def margin(self, i: int) -> Tensor:
        return getattr(self, f"margin{i + 1}")

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for i, connector in enumerate(self.connectors):
            s = connector(student.stages_pre[i])
            s, t = self.adapted(f"stage{i + 1}", s, teacher.stages_pre[i].detach())
            target = torch.maximum(t, self.margin(i).to(t.dtype).view(1, -1, 1, 1))
            losses.append(partial_l2(s, target).sum() / s.shape[0] / 1000.0)
        return torch.stack(losses).mean()
