"""Named feature taps returned by every model's forward pass."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor


@dataclass
class FeatureTaps:
    """What a network exposes to distillation losses.

    ``stages_pre[i]`` is stage ``i``'s output before its final ReLU, ``stages[i]``
    the same tensor after it.  Where a stage ends without a ReLU the taps follow the reference
    definition's feature lists: MobileNetV2's linear bottlenecks give the same tensor for both; a
    wide ResNet's ``stages[i]`` is the residual sum and ``stages_pre[i]`` the batch norm applied to
    it next (its pre-activation feature), so there ``stages[i] != relu(stages_pre[i])``.
    ``embedding`` is the pooled, flattened feature that feeds the classifier; ``logits`` the
    classifier's output.
    """

    stem: Tensor
    stages_pre: tuple[Tensor, ...]
    stages: tuple[Tensor, ...]
    embedding: Tensor
    logits: Tensor
