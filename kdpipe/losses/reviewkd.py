"""ReviewKD: knowledge review with attention-based fusion and the hierarchical context loss.

Chen, Liu, Zhao and Jia, "Distilling Knowledge via Knowledge Review", CVPR 2021, in the form of
mdistiller's ``ReviewKD`` (whose CIFAR-100 numbers sit beside ours).

The student's levels are its stage outputs (post-ReLU; ``stu_preact`` takes them before the ReLU)
plus its pooled embedding as a 1x1 map; the teacher's, its stage outputs before the ReLU plus its
pooled embedding.  The review path runs from the deepest level to the shallowest: at level i an
ABF (attention-based fusion) maps the student map to ``mid`` channels (1x1 conv + BN), fuses it
with the previous, coarser level's fused map ``r`` (nearest-upsampled to the student's size)::

    a = sigmoid(conv1x1([x, r]))          # two attention maps, (B, 2, H, W)
    x = x * a[:, 0] + r * a[:, 1]

(the deepest level has nothing to fuse with), resizes ``x`` to the teacher's spatial size (nearest),
keeps it as the next level's ``r`` and outputs ``conv3x3(x) + BN`` with the teacher's channels.
``mid = min(max_mid_channel, the student's embedding width)``.

The hierarchical context loss compares each output ``s`` with the teacher map ``t``::

    HCL(s, t) = (MSE(s, t) + sum_k 2^-k MSE(P_k(s), P_k(t))) / (1 + sum_k 2^-k)

where ``P_k`` is adaptive average pooling to l x l for the k-th (k = 1, 2, ...) of the sizes
l = 4, 2, 1 smaller than the map's height, and MSE averages over all elements.  The levels' HCLs
are summed (not averaged), and the sum is scaled by the warm-up factor
``min(n / warmup, 1)``: n = epoch + 1 (``warmup_start one``, mdistiller, whose epochs count from 1)
or n = epoch (``zero``, the paper's code, whose first epoch is undistilled), epoch 0-based;
``warmup 0`` means none.  The training task multiplies by ``lambda_kd``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

# Pooled sizes of the hierarchical context loss, finest first; a size is used where it is smaller
# than the map's height, and the k-th one used weighs 2^-k.
HCL_SIZES = (4, 2, 1)


def hcl_level(student: Tensor, teacher: Tensor) -> Tensor:
    """The hierarchical context loss of one (B, C, H, W) pair of maps."""
    total, norm, weight = F.mse_loss(student, teacher), 1.0, 1.0
    for size in HCL_SIZES:
        if size >= student.shape[2]:
            continue
        weight /= 2.0
        pooled = F.mse_loss(F.adaptive_avg_pool2d(student, size), F.adaptive_avg_pool2d(teacher, size))
        total = total + weight * pooled
        norm += weight
    return total / norm


def hcl(students: list[Tensor], teachers: list[Tensor]) -> Tensor:
    """Sum of the levels' hierarchical context losses."""
    return torch.stack([hcl_level(s, t) for s, t in zip(students, teachers, strict=True)]).sum()


def warmup_factor(epoch: int, warmup: int, start: str = "one") -> float:
    """Weight of the loss at 0-based ``epoch``: min(n / warmup, 1), n = epoch + 1 (``one``) or epoch (``zero``)."""
    if warmup == 0:
        return 1.0
    n = epoch + 1 if start == "one" else epoch
    return min(n / warmup, 1.0)


class ABF(nn.Module):
    """Attention-based fusion of one level: student channels -> ``mid`` -> (fused) -> teacher channels."""

    def __init__(self, c_student: int, mid: int, c_teacher: int, fuse: bool):
        super().__init__()
        self.conv1 = nn.Sequential(nn.Conv2d(c_student, mid, 1, bias=False), nn.BatchNorm2d(mid))
        self.conv2 = nn.Sequential(nn.Conv2d(mid, c_teacher, 3, padding=1, bias=False), nn.BatchNorm2d(c_teacher))
        self.att_conv = nn.Sequential(nn.Conv2d(2 * mid, 2, 1), nn.Sigmoid()) if fuse else None
        # the reference's initialisation of the two convolutions (the attention conv keeps torch's)
        nn.init.kaiming_uniform_(self.conv1[0].weight, a=1)
        nn.init.kaiming_uniform_(self.conv2[0].weight, a=1)

    def forward(self, x: Tensor, residual: Tensor | None, out_size: tuple[int, int]) -> tuple[Tensor, Tensor]:
        """(output with the teacher's channels and size, the fused ``mid``-channel map for the next level)."""
        size = tuple(x.shape[2:])
        x = self.conv1(x)
        if self.att_conv is not None:
            residual = F.interpolate(residual, size, mode="nearest")
            att = self.att_conv(torch.cat([x, residual], dim=1))
            x = x * att[:, 0:1] + residual * att[:, 1:2]
        if tuple(x.shape[2:]) != tuple(out_size):
            x = F.interpolate(x, tuple(out_size), mode="nearest")
        return self.conv2(x), x


@register
class ReviewKDLoss(DistillLoss):
    name: ClassVar[str] = "reviewkd"
    paper: ClassVar[str] = "Chen et al., Distilling Knowledge via Knowledge Review, CVPR 2021"
    defaults: ClassVar[dict[str, Any]] = {
        "lambda_kd": 5.0,  # mdistiller configs/cifar100/reviewkd.yaml (REVIEWKD_WEIGHT)
        "warmup": 20,  # mdistiller engine/cfg.py REVIEWKD.WARMUP_EPOCHS
        "warmup_start": "one",  # mdistiller's epochs count from 1
        "max_mid_channel": 512,  # mdistiller distillers/ReviewKD.py: min(512, in_channels[-1])
        "stu_preact": False,  # mdistiller engine/cfg.py REVIEWKD.STU_PREACT
    }
    setting_choices: ClassVar[dict[str, tuple[str, ...]]] = {"warmup_start": ("one", "zero")}
    teacher_taps: ClassVar[frozenset[str]] = frozenset({"stages_pre", "embedding"})
    stagewise: ClassVar[bool] = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model: nn.Module | None = None, **settings: Any):
        super().__init__(student, teacher, teacher_model, **settings)
        n_s = len(student.stages)  # the teacher's too (stagewise)
        s_levels = [tuple(s) for s in student.stages] + [(student.embedding, 1, 1)]
        t_levels = [tuple(t) for t in teacher.stages] + [(teacher.embedding, 1, 1)]
        self.level_names = [f"stage{i + 1}" for i in range(n_s)] + ["embedding"]
        self.student_levels, self.teacher_levels = s_levels, t_levels
        self.mid_channel = min(int(self.settings["max_mid_channel"]), student.embedding)
        last = len(s_levels) - 1
        # shallowest first; the deepest (the embedding) has no coarser level to fuse with
        self.abfs = nn.ModuleList(
            ABF(s[0], self.mid_channel, t[0], fuse=i < last) for i, (s, t) in enumerate(zip(s_levels, t_levels))
        )

    def review(self, student_maps: list[Tensor]) -> list[Tensor]:
        """The ABF outputs, shallowest first, computed from the deepest level to the shallowest."""
        outputs: list[Tensor] = []
        residual = None
        for i in reversed(range(len(self.abfs))):
            out, residual = self.abfs[i](student_maps[i], residual, self.teacher_levels[i][1:])
            outputs.insert(0, out)
        return outputs

    def student_maps(self, student: FeatureTaps) -> list[Tensor]:
        stages = student.stages_pre if self.settings["stu_preact"] else student.stages
        return [*stages, student.embedding[:, :, None, None]]

    @staticmethod
    def teacher_maps(teacher: FeatureTaps) -> list[Tensor]:
        return [t.detach() for t in (*teacher.stages_pre, teacher.embedding[:, :, None, None])]

    def factor(self, epoch: int) -> float:
        return warmup_factor(epoch, int(self.settings["warmup"]), self.settings["warmup_start"])

    def capture_key(self, epoch: int) -> tuple:
        return (self.factor(epoch),)

    def describe(self) -> dict:
        out = super().describe()
        out["mid_channel"] = self.mid_channel
        out["levels"] = [
            {
                "where": name,
                "student_shape": list(s),
                "teacher_shape": list(t),
                "resize": "none" if s[1:] == t[1:] else "nearest",
            }
            for name, s, t in zip(self.level_names, self.student_levels, self.teacher_levels)
        ]
        return out

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        outputs = self.review(self.student_maps(student))
        return self.factor(batch.epoch) * hcl(outputs, self.teacher_maps(teacher))
