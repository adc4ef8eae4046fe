"""In-place steps of the networks' forward passes, with the results of the out-of-place ones bit for bit.

:func:`relu_` and the residual sum :func:`add_into` write into their input where that input is a fresh
output -- of a convolution, a batch norm, a sum or a concatenation -- that nothing else holds and whose
producer's backward does not read it (a convolution's and a batch norm's read their inputs).  A tensor a
network exposes as a tap (:class:`~kdpipe.models.taps.FeatureTaps`) or passes on to a shortcut is never
written into; autograd refuses (it does not silently miscompute) a write into a tensor a backward needs.
A forward hook on a batch norm or convolution whose output is written into must copy it (``o.clone()``)
to keep the value it had; nothing in kdpipe hooks a module.

Each such step saves an allocation and a pass over the activation's memory (README, CPU throughput).
:func:`out_of_place` computes them as before, for the tests that hold the two equal and for the benchmark
that times them.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch.nn.functional as F
from torch import Tensor

_in_place = True


def relu_(x: Tensor) -> Tensor:
    """``relu(x)``, written into ``x`` (a fresh output nothing else holds)."""
    return F.relu_(x) if _in_place else F.relu(x)


def add_into(out: Tensor, other: Tensor) -> Tensor:
    """``out + other``, written into ``out`` (a fresh output nothing else holds) where that gives the same
    tensor: the same dtype, shape and strides (no promotion, no broadcast, the same layout)."""
    if _in_place and out.dtype == other.dtype and out.shape == other.shape and out.stride() == other.stride():
        return out.add_(other)
    return out + other


@contextlib.contextmanager
def out_of_place() -> Iterator[None]:
    """Within the context, :func:`relu_` and :func:`add_into` allocate their results, as the networks'
    forward passes did before them."""
    global _in_place
    saved, _in_place = _in_place, False
    try:
        yield
    finally:
        _in_place = saved
