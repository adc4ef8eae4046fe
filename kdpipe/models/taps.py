"""Named feature taps returned by every model's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class FeatureTaps:
    """What a network exposes to distillation losses.

    ``stages_pre[i]`` is stage ``i``'s output before its final ReLU, ``stages[i]``
    the same tensor after it.  ``embedding`` is the pooled, flattened feature that
    feeds the classifier; ``logits`` the classifier's output.
    """

    stem: Tensor
    stages_pre: tuple[Tensor, ...]
    stages: tuple[Tensor, ...]
    embedding: Tensor
    logits: Tensor
