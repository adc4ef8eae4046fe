"""How a feature mode's per-stage terms combine: the ``stage_reduce`` setting (not a loss).

Knowledge-Distillation-Zoo averages the stages' terms (``train_kd.py``: ``(... ) / 3.0``);
RepDistiller sums them (``helper/loops.py`` and ``helper/pretrain.py``: ``loss_kd =
sum(loss_group)``), so its ``lambda_kd`` weighs every stage's term fully -- a factor of the stage
count apart.  ``at``, ``vid``, ``nst`` (all stages), ``sp`` (all stages), ``ab`` and ``fsp`` read it.
"""

from __future__ import annotations

import torch
from torch import Tensor

STAGE_REDUCE_CHOICES = ("mean", "sum")  # the default first: KD-Zoo's mean


def reduce_stages(losses: list[Tensor], how: str) -> Tensor:
    """The per-stage terms averaged (``mean``) or summed (``sum``)."""
    stacked = torch.stack(losses)
    return stacked.sum() if how == "sum" else stacked.mean()
