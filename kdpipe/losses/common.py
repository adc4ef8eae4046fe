"""Logit standardisation, shared by the logit-based losses.

Logit standardisation (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
Distillation", CVPR 2024): before the temperature, each sample's logits -- the teacher's
and the student's separately -- are z-scored over the classes,
``(z - mean(z)) / (std(z) + 1e-7)``, as the official code does
(sunshangquan/logit-standardization-KD, ``mdistiller/distillers/KD.py`` lines 7-10 and
``DKD.py`` lines 7-10): ``std`` is ``torch.std``, i.e. with Bessel's correction (divisor
``K - 1``), and ``1e-7`` is added to the standard deviation, not under the root.  The
temperature then acts as the paper's "base temperature".
"""

from __future__ import annotations

from torch import Tensor


LOGIT_STAND_EPS = 1e-7  # added to each sample's standard deviation (official code)
LOGIT_STAND_CHOICES = ("off", "on")


def standardise_logits(logits: Tensor) -> Tensor:
    """Each row z-scored over the classes: ``(z - mean) / (std_{K-1} + 1e-7)``."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)  # unbiased (K - 1), as torch.std in the official code
    return (logits - mean) / (std + LOGIT_STAND_EPS)


def maybe_standardise(student_logits: Tensor, teacher_logits: Tensor, logit_stand: str) -> tuple[Tensor, Tensor]:
    """Both logit tensors standardised when ``logit_stand`` is ``on``; unchanged when ``off``."""
    if logit_stand == "on":
        return standardise_logits(student_logits), standardise_logits(teacher_logits)
    return student_logits, teacher_logits
