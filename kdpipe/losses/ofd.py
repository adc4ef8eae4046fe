"""OFD: overhaul of feature distillation.

Heo, Kim, Yun, Park, Kwak and Choi, "A Comprehensive Overhaul of Feature Distillation",
ICCV 2019.  Distils pre-ReLU features of every stage through a student connector ``r``
(1x1 conv + BN), with the teacher target passed through the margin ReLU::

    sigma_m(t) = max(t, m_c),   m_c = E[t_c | t_c < 0]

and the partial L2 distance::

    d_p(T, S) = sum_i  0                  if S_i <= T_i <= 0
                       (T_i - S_i)^2      otherwise

with ``T = sigma_m(teacher pre-ReLU)`` and ``S = r(student pre-ReLU)``; the stages, stage i
with stage i (both networks need as many), are averaged.  Two settings choose between
Knowledge-Distillation-Zoo's form (the defaults) and the paper's (its official code's):

* ``margin``: ``batch`` (default) estimates m_c from the teacher's pre-ReLU features of the
  current batch, sum of the negative values of channel c over (B, H, W) divided by their
  count + 1e-6 (0 where there are none); ``bn`` computes it once from the teacher's batch
  norm, treating the response as N(beta_c, gamma_c^2):
  ``m_c = beta - gamma * phi(beta/gamma) / Phi(-beta/gamma)`` (-3 gamma when Phi(-beta/gamma) < 1e-3).
* ``reduction``: ``mean`` (default) averages d_p's terms over all B*C*H*W elements of a
  stage; ``sum_batch`` sums them and divides by batch size and 1000.
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

# Added to the count of negative responses in a batch-estimated margin.
BATCH_MARGIN_EPS = 1e-6

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


def margin_from_batch(t: Tensor) -> Tensor:
    """Per-channel mean of the negative entries of (B, C, H, W) features, as (1, C, 1, 1); 0 where none are."""
    negative = (t < 0).to(t.dtype)
    return (t * negative).sum(dim=(0, 2, 3), keepdim=True) / (
        negative.sum(dim=(0, 2, 3), keepdim=True) + BATCH_MARGIN_EPS
    )


def teacher_pre_relu_bns(teacher_model: nn.Module | None, n_stages: int) -> list[nn.Module]:
    """The teacher's batch norms before each stage's last ReLU, for the BN-derived margins."""
    if teacher_model is None:
        raise KdpipeError("kd_mode ofd: needs the teacher network to read its batch-norm statistics")
    if not hasattr(teacher_model, "pre_relu_bns"):
        raise KdpipeError(
            f"kd_mode ofd: teacher {type(teacher_model).__name__} does not expose pre_relu_bns() for its margins"
        )
    bns = list(teacher_model.pre_relu_bns())
    if len(bns) != n_stages:
        raise KdpipeError(
            f"kd_mode ofd: teacher has {len(bns)} pre-ReLU batch norms for its {n_stages} stages; they must agree"
        )
    return bns


def partial_l2(student: Tensor, target: Tensor) -> Tensor:
    """Element-wise (s - t)^2, zero where s <= t <= 0 (the student is already 'off' enough)."""
    skip = (student <= target) & (target <= 0)
    return (student - target).pow(2) * (~skip).to(student.dtype)


@register
class OFDLoss(DistillLoss):
    name: ClassVar[str] = "ofd"
    paper: ClassVar[str] = "Heo et al., A Comprehensive Overhaul of Feature Distillation, ICCV 2019"
    defaults: ClassVar[dict[str, Any]] = {"lambda_kd": 0.5, "margin": "batch", "reduction": "mean"}
    setting_choices: ClassVar[dict[str, tuple[str, ...]]] = {
        "margin": ("batch", "bn"),
        "reduction": ("mean", "sum_batch"),
    }
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages_pre"})
    stagewise: ClassVar[bool] = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        super().__init__(student, teacher, teacher_model, **settings)
        n_stages = len(self.teacher_shapes.stages)  # the student's too (stagewise)
        bns = teacher_pre_relu_bns(teacher_model, n_stages) if self.settings["margin"] == "bn" else []
        self.connectors = nn.ModuleList()
        for i, (s_shape, t_shape) in enumerate(zip(self.student_shapes.stages, self.teacher_shapes.stages)):
            c_s, c_t = s_shape[0], t_shape[0]
            conv = nn.Conv2d(c_s, c_t, 1, bias=False)
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / c_t))  # the paper's code: std sqrt(2 / (k*k*out))
            norm = nn.BatchNorm2d(c_t)
            self.connectors.append(nn.Sequential(conv, norm))
            if bns:
                bn = bns[i]
                if bn.num_features != c_t:
                    raise KdpipeError(
                        f"kd_mode ofd: teacher stage {i + 1} batch norm has {bn.num_features} channels, the tap {c_t}"
                    )
                self.register_buffer(f"margin{i + 1}", margin_from_bn(bn.bias, bn.weight))
            # The connector maps channels; a spatial mismatch is bridged by pooling the larger map.
            self.adapter(f"stage{i + 1}", tuple(s_shape), tuple(t_shape), pool_only=True)

    def margin(self, i: int, teacher_map: Tensor) -> Tensor:
        """Stage i's margins as (1, C, 1, 1): from the (unpooled) teacher batch, or the stored BN-derived ones."""
        if self.settings["margin"] == "batch":
            return margin_from_batch(teacher_map)
        return getattr(self, f"margin{i + 1}").to(teacher_map.dtype).view(1, -1, 1, 1)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for i, connector in enumerate(self.connectors):
            t_map = teacher.stages_pre[i].detach()
            margin = self.margin(i, t_map)
            s, t = self.adapted(f"stage{i + 1}", connector(student.stages_pre[i]), t_map)
            distance = partial_l2(s, torch.maximum(t, margin))
            if self.settings["reduction"] == "mean":
                losses.append(distance.mean())
            else:
                losses.append(distance.sum() / s.shape[0] / 1000.0)
        return torch.stack(losses).mean()
