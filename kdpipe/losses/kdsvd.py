"""KDSVD: self-supervised knowledge distillation using singular value decomposition.

Lee, Kim & Song, "Self-supervised Knowledge Distillation Using Singular Value Decomposition",
ECCV 2018.  Each stage's feature map is compressed by a truncated SVD to a few right singular
vectors; the knowledge is the radial-basis-function relation between the singular vectors of
consecutive stages, and the student matches the teacher's relations.

As the reference, mdistiller (megvii-research/mdistiller, ``mdistiller/distillers/KDSVD.py``):

* taps: the stage outputs after ReLU, ``feats[1:]`` there (line 92: the stem ``feats[0]``
  left out) -- ``taps.stages`` here;
* per sample, the map (C, H, W) is viewed as a ``(C*H) x W`` matrix (``svd``, line 42:
  ``feat.view(B, C*H, W)``, computed in float32), decomposed, non-finite entries set to 0;
  the teacher keeps ``k`` right singular vectors, the student ``k + 3`` (lines 13-14); the
  kept singular values and each singular vector are L2-normalised (lines 49-52);
* sign alignment (``align_rsv``, lines 62-71): for each teacher vector, the student vector of
  largest ``|cosine|`` is taken, multiplied by the cosine's sign;
* both vector sets are scaled by the teacher's normalised singular values (lines 16-18);
* for each pair of consecutive stages (i-1, i), ``G[p, q, j] = exp(-(v_i[p, j] -
  v_{i-1}[q, j])^2 / 8)`` for student and teacher, and the loss adds
  ``sum (G_s - G_t)^2`` (non-finite entries 0), divided by the batch size (lines 20-35);
* defaults (``mdistiller/engine/cfg.py`` lines 92-97): ``K 1``, ``CE_WEIGHT 1.0``,
  ``FEAT_WEIGHT 1.0``, i.e. ``lambda_kd 1``, ``k 1``.

Setting ``svd_layout`` -- where mdistiller departs from the paper:

* ``width`` (default, mdistiller's form): rows ``C*H``, columns ``W``: mdistiller's NCHW view
  makes the singular vectors range over the map's width;
* ``channels`` (the paper's form): rows ``H*W`` (positions), columns ``C``: the singular
  vectors range over the channels, as in the authors' TensorFlow code (sseung0703/SSKD_SVD,
  ``nets/Distillation.py``: NHWC ``reshape(X, [B, H*W, C])``).

Shapes: the relation of stages i-1 and i has one entry per pair of vector coordinates, so the
student's and teacher's vectors must have the same length: in ``width`` layout their maps'
widths must agree (otherwise the wider map is average-pooled, a parameter-free adapter); in
``channels`` layout their channel counts (otherwise a learned 1x1 convolution + BN on the
student, the shared :class:`~kdpipe.losses.base.Adapter`).  Teacher and student need the same
number of stages.

SVD gradients are undefined where singular values repeat (e.g. all-zero maps); as in the
reference, non-finite forward values are zeroed, gradients are not guarded.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes

RBF_WIDTH = 8.0  # exp(-d^2 / 8)
STUDENT_EXTRA = 3  # the student keeps k + 3 singular vectors to align from


def _finite(x: Tensor) -> Tensor:
    return torch.where(torch.isfinite(x), x, torch.zeros_like(x))


def svd_matrix(feat: Tensor, layout: str) -> Tensor:
    """The per-sample matrix that is decomposed: ``(C*H) x W`` (width) or ``(H*W) x C`` (channels)."""
    b, c, h, w = feat.shape
    if layout == "width":
        x = feat.reshape(b, c * h, w)
    else:
        x = feat.permute(0, 2, 3, 1).reshape(b, h * w, c)
    return x if x.dtype == torch.float64 else x.float()


def truncated_svd(feat: Tensor, n: int, layout: str) -> tuple[Tensor, Tensor]:
    """(singular values, right singular vectors) of each sample, the first ``n`` of each, L2-normalised."""
    _, s, vh = torch.linalg.svd(svd_matrix(feat, layout), full_matrices=False)
    s, v = _finite(s), _finite(vh.transpose(-2, -1))
    return F.normalize(s[:, :n], dim=1), F.normalize(v[:, :, :n], dim=1)


def align_signs(v_s: Tensor, v_t: Tensor) -> Tensor:
    """For each teacher vector, the student vector of largest |cosine|, times the cosine's sign."""
    cosine = torch.matmul(v_s.transpose(-2, -1), v_t)  # (B, k + 3, k)
    best = cosine.abs().max(dim=1, keepdim=True).values
    pick = torch.where(cosine.abs() == best, torch.sign(cosine), torch.zeros_like(cosine))
    return torch.matmul(v_s, pick)


def rbf(v: Tensor, v_prev: Tensor) -> Tensor:
    """``exp(-(v[p, j] - v_prev[q, j])^2 / 8)``: (B, D_i, D_{i-1}, k)."""
    return torch.exp(-(v.unsqueeze(2) - v_prev.unsqueeze(1)).pow(2) / RBF_WIDTH)


@register
class KDSVDLoss(DistillLoss):
    name = "kdsvd"
    paper = "Lee, Kim & Song, ECCV 2018: Self-supervised Knowledge Distillation Using Singular Value Decomposition"
    defaults = {"lambda_kd": 1.0, "k": 1, "svd_layout": "width"}
    setting_choices = {"svd_layout": ("width", "channels")}
    teacher_taps = frozenset({"stages"})
    capturable = False  # torch.linalg.svd checks its convergence on the host (seen failing capture on an H200)
    stagewise = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        k = self.settings["k"]
        layout = self.settings["svd_layout"]
        if len(teacher.stages) < 2:
            raise KdpipeError("kd_mode kdsvd: needs at least two stages (it relates consecutive stages)")
        for i, (s_shape, t_shape) in enumerate(zip(student.stages, teacher.stages)):
            c, h, w = t_shape
            if layout == "width":
                if s_shape[2] != t_shape[2]:  # widths differ: pool the larger map
                    self.adapter(f"stage{i + 1}", s_shape, t_shape, pool_only=True)
                    h, w = min(h, s_shape[1]), min(w, s_shape[2])
                rows, cols = c * h, w
            else:
                if s_shape[0] != t_shape[0]:  # channels differ: 1x1 conv + BN on the student
                    self.adapter(f"stage{i + 1}", s_shape, t_shape)
                    h, w = min(h, s_shape[1]), min(w, s_shape[2])
                rows, cols = h * w, c
            if k > min(rows, cols):
                raise KdpipeError(
                    f"kd_mode kdsvd: k: got {k}; the teacher's stage {i + 1} ({rows} x {cols} per sample with "
                    f"svd_layout {layout}) has only {min(rows, cols)} singular vectors"
                )

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        k, layout = self.settings["k"], self.settings["svd_layout"]
        total = None
        prev_s = prev_t = None
        for i, (f_s, f_t) in enumerate(zip(student.stages, teacher.stages)):
            f_s, f_t = self.adapted(f"stage{i + 1}", f_s, f_t.detach())
            s_t, v_t = truncated_svd(f_t, k, layout)
            _, v_s = truncated_svd(f_s, k + STUDENT_EXTRA, layout)
            v_s = align_signs(v_s, v_t)
            scale = s_t.unsqueeze(1)  # (B, 1, k)
            v_t, v_s = v_t * scale, v_s * scale
            if i > 0:
                diff = (rbf(v_s, prev_s) - rbf(v_t, prev_t)).pow(2)
                term = _finite(diff).sum()
                total = term if total is None else total + term
            prev_s, prev_t = v_s, v_t
        return total / student.stages[0].shape[0]
