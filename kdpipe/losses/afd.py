"""AFD: attentive feature distillation.

Wang, Gao, Zhao, Li, Dou and Xu, "Pay Attention to Features, Transfer Learn Faster CNNs",
ICLR 2020.  Feature maps are matched channel by channel, each channel's distance weighted
by an attention weight ``rho`` predicted from the teacher's feature (the paper's attentive
feature distillation regulariser)::

    L_AFD = sum_stages  sum_c  rho_c * || f_c^S / ||f_c^S||  -  f_c^T / ||f_c^T|| ||^2

``rho = normalise(sigmoid(W2 relu(W1 GAP(t))))`` sums to 1 over channels per sample; the
maps are L2-normalised per channel over positions.  Here, per post-ReLU stage, the squared
difference is averaged over positions, weighted by ``rho`` and summed over channels, then
averaged over the batch; the stages, stage i with stage i (both networks need as many), are
averaged.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

NORM_EPS = 1e-6


class ChannelAttention(nn.Module):
    """rho = sigmoid(Conv1x1(C->M) -> ReLU -> Conv1x1(M->C) of the spatial mean), normalised to sum 1.
    Initialised as Knowledge-Distillation-Zoo's ``AFD``: weights Kaiming-normal (fan_out, ReLU gain),
    biases zero."""

    def __init__(self, channels: int, mid: int):
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(channels, mid, 1), nn.ReLU(), nn.Conv2d(mid, channels, 1))
        for conv in self.net[::2]:
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)

    def forward(self, teacher_map: Tensor) -> Tensor:
        pooled = teacher_map.mean(dim=(2, 3), keepdim=True)
        gate = torch.sigmoid(self.net(pooled)).flatten(1)  # (B, C)
        return gate / gate.sum(dim=1, keepdim=True)


def channel_normalise(x: Tensor) -> Tensor:
    """Each (sample, channel) map divided by its L2 norm over positions (+ eps)."""
    return x / (x.flatten(2).norm(dim=2)[:, :, None, None] + NORM_EPS)


@register
class AFDLoss(DistillLoss):
    name: ClassVar[str] = "afd"
    paper: ClassVar[str] = "Wang et al., Pay Attention to Features, Transfer Learn Faster CNNs, ICLR 2020"
    revisions = (
        "2026-11-27: the attention network starts as KD-Zoo's (Kaiming-normal weights, fan_out; biases 0),"
        " was torch's default initialisation",
    )
    defaults: ClassVar[dict[str, Any]] = {"lambda_kd": 500.0, "att_f": 1.0}
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages"})
    stagewise: ClassVar[bool] = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        super().__init__(student, teacher, teacher_model, **settings)
        att_f = float(self.settings["att_f"])
        self.attention = nn.ModuleList()
        for i, (s_shape, t_shape) in enumerate(zip(self.student_shapes.stages, self.teacher_shapes.stages)):
            c_t = t_shape[0]
            self.attention.append(ChannelAttention(c_t, max(1, round(att_f * c_t))))
            self.adapter(f"stage{i + 1}", tuple(s_shape), tuple(t_shape))

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        losses = []
        for i, attention in enumerate(self.attention):
            t_full = teacher.stages[i].detach()
            rho = attention(t_full)  # (B, C_t); gradient reaches the attention net, not the teacher
            s, t = self.adapted(f"stage{i + 1}", student.stages[i], t_full)
            diff = (channel_normalise(s) - channel_normalise(t)).pow(2).mean(dim=(2, 3))  # (B, C_t)
            losses.append((rho * diff).sum(dim=1).mean())
        return torch.stack(losses).mean()
