"""Attention distillation on gradient-weighted class-activation maps (the attention term of LwM).

Dhar, Singh, Peng, Wu and Chellappa, "Learning without Memorizing", CVPR 2019.

Implements the attention distillation loss L_AD (Eq. 2): the L1 distance between the
L2-normalised, vectorised attention maps of student and teacher, taken on the post-ReLU
stage-2 map A.  With g = d(sum_b z[b, y_b]) / dA and alpha_c = the spatial mean of g_c,
the setting ``cam`` picks the map:

* ``kdzoo`` (default, Knowledge-Distillation-Zoo's form): cam = ReLU(sum_c alpha_c g_c),
  the channel weights applied to the gradients themselves;
* ``gradcam`` (the paper's Grad-CAM, Selvaraju et al., ICCV 2017): cam = ReLU(sum_c alpha_c A_c).

The student's g is built with create_graph (so the term trains the student); the
teacher's is detached.  A larger cam is average-pooled to the smaller's size; each cam is
divided by its L2 norm (floored at 1e-12); the L1 difference is averaged over B*H*W.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..errors import KdpipeError
from ..models import FeatureTaps
from . import register
from .base import DistillBatch, DistillLoss, TapShapes, require_same_classes
from .sobolev import target_logit_sum


def grad_cam(a: Tensor, g: Tensor) -> Tensor:
    """(B, C, H, W) activations and their gradients -> (B, H, W) Grad-CAM."""
    alpha = g.mean(dim=(2, 3), keepdim=True)
    return F.relu((alpha * a).sum(1))


def gradient_cam(g: Tensor) -> Tensor:
    """(B, C, H, W) gradients -> (B, H, W): Grad-CAM's channel weights applied to the gradients."""
    return grad_cam(g, g)


@register
class LwMLoss(DistillLoss):
    name = "lwm"
    paper = "Dhar et al., Learning without Memorizing, CVPR 2019"
    defaults = {"lambda_kd": 0.4, "cam": "kdzoo"}
    setting_choices = {"cam": ("kdzoo", "gradcam")}
    teacher_taps = frozenset({"stages", "logits"})
    teacher_grad = True
    input_grad = True

    def __init__(self, student: TapShapes, teacher: TapShapes, teacher_model=None, **settings):
        super().__init__(student, teacher, teacher_model, **settings)
        require_same_classes(student, teacher, self.name)

    def forward(self, student: FeatureTaps, teacher: FeatureTaps, batch: DistillBatch) -> Tensor:
        a_s, a_t = student.stages[1], teacher.stages[1]
        if not a_t.requires_grad or not a_s.requires_grad:
            raise KdpipeError("kd_mode lwm: both forwards must run with autograd enabled and the input requiring grad")
        # Teacher first, keeping its graph: the teacher taps may share a graph with the student's.
        (g_t,) = torch.autograd.grad(target_logit_sum(teacher.logits, batch.y), a_t, retain_graph=True)
        (g_s,) = torch.autograd.grad(target_logit_sum(student.logits, batch.y), a_s, create_graph=True)
        if self.settings["cam"] == "gradcam":
            cam_s, cam_t = grad_cam(a_s, g_s), grad_cam(a_t.detach(), g_t.detach())
        else:
            cam_s, cam_t = gradient_cam(g_s), gradient_cam(g_t.detach())
        h = min(cam_s.shape[1], cam_t.shape[1])
        w = min(cam_s.shape[2], cam_t.shape[2])
        if tuple(cam_s.shape[1:]) != (h, w):
            cam_s = F.adaptive_avg_pool2d(cam_s.unsqueeze(1), (h, w)).squeeze(1)
        if tuple(cam_t.shape[1:]) != (h, w):
            cam_t = F.adaptive_avg_pool2d(cam_t.unsqueeze(1), (h, w)).squeeze(1)
        cam_s = F.normalize(cam_s.flatten(1), p=2, dim=1)
        cam_t = F.normalize(cam_t.flatten(1), p=2, dim=1)
        return (cam_s - cam_t).abs().mean()
