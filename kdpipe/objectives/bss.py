"""BSS: distillation with boundary supporting samples.

Heo, Lee, Yun and Choi, "Knowledge Distillation with Adversarial Samples Supporting
Decision Boundary", AAAI 2019.

The teacher's decision boundary is transferred by distilling on adversarial
"boundary supporting samples" (BSSs): base samples that student and teacher both
classify correctly are pushed, by an iterative gradient attack on the teacher, toward
a target class until they reach (cross) the teacher's boundary between the true and
the target class.  The student then matches the teacher's softened outputs on those
samples with a KL term whose weight decays over training.

Building blocks (all batched, with no host synchronisation in the tensor functions):

* :func:`bss_lambda` - the epoch schedule of the adversarial KD weight (zero during a
  warm-up of 10 of 200 epochs, scaled; then a linear decay ``1 - 1.25 (epoch-1)/epochs``
  clipped at zero), the Knowledge-Distillation-Zoo settings;
* :func:`select_attack_samples` - which base samples to attack (correct for both
  networks, largest student/teacher disagreement off the true class first);
* :func:`attack_classes` - the target class per sample: drawn from the teacher's softmax
  over the classes other than its top-1 (``sampled``, the default: what KD-Zoo's
  ``train_bss.py`` and the official BSS code compute -- they first take the runner-up and
  then overwrite it with this draw), or the teacher's runner-up (``runner_up``, the form
  the paper describes);
* :func:`attack_bounds` - where the adversarial sample is clamped: to ``[-2.5, 2.5]`` in
  normalised input space (``normalized``, the default: KD-Zoo and the official code), or
  to the per-channel image range ``[(0 - mean) / std, (1 - mean) / std]`` (``image``);
* :func:`boundary_attack` - the iterative attack ``x <- x + eta (p_y - p_k + eps)
  g / ||g||`` with ``g`` the gradient of ``p_k - p_y``, applied only to samples the
  teacher still assigns to their true class, then the clamp;
* :func:`bss_kd_loss` - ``KL(softmax(t/T) || softmax(s/T))`` averaged over the valid
  adversarial samples, without the ``T^2`` factor (the scale KD-Zoo's ``lambda_kd`` = 2
  assumes);
* :func:`subset_batch_norm` - a context under which a model's training-mode batch norm
  layers see only the kept rows of a fixed-size batch, so that the student's forward on a
  padded adversarial batch equals its forward on the valid rows alone (the fixed-size step
  of :mod:`kdpipe.methods.bss`, which a CUDA graph can replay).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from ..errors import KdpipeError

ATTACK_CLASSES = ("sampled", "runner_up")
ATTACK_CLAMPS = ("normalized", "image")
NORMALIZED_BOUND = 2.5  # KD-Zoo's and the official code's clamp, in normalised input units


def bss_lambda(epoch: int, epochs: int, lambda_kd: float, warmup_epochs: int | None = None) -> float:
    """Weight of the adversarial KD term in 1-based ``epoch`` of ``epochs``.

    0 while ``epoch <= warmup_epochs`` (default ``round(10 * epochs / 200)``: KD-Zoo's 10
    of 200 epochs, scaled), then ``max(lambda_kd * (1 - 1.25 * (epoch - 1) / epochs), 0)``.
    """
    if warmup_epochs is None:
        warmup_epochs = round(10 * epochs / 200)
    if epoch <= warmup_epochs:
        return 0.0
    return max(lambda_kd * (1.0 - 1.25 * (epoch - 1) / epochs), 0.0)


def select_attack_samples(s_logits: Tensor, t_logits: Tensor, y: Tensor, attack_size: int) -> tuple[Tensor, Tensor]:
    """Base samples to attack, as ``(index, valid)``.

    Candidates are samples that both student and teacher classify correctly.  Among
    them, those whose softmax outputs disagree most off the true class come first:
    ``score = sum_{c != y} (p_t[c] - p_s[c])^2``; non-candidates score ``-inf``.
    ``index`` (A,) int64 holds the top ``A = min(attack_size, B)`` samples by score and
    ``valid`` (A,) bool says which of them are candidates.
    """
    s_logits = s_logits.detach()
    t_logits = t_logits.detach()
    batch = s_logits.shape[0]
    k = min(max(int(attack_size), 0), batch)
    y_col = y.view(-1, 1).to(torch.long)
    candidate = (s_logits.argmax(dim=1) == y) & (t_logits.argmax(dim=1) == y)
    diff = F.softmax(t_logits.float(), dim=1) - F.softmax(s_logits.float(), dim=1)
    score = diff.pow(2).scatter(1, y_col, 0.0).sum(dim=1)
    score = torch.where(candidate, score, torch.full_like(score, float("-inf")))
    index = score.topk(k, dim=0, largest=True, sorted=True).indices
    return index, candidate.gather(0, index)


def attack_classes(t_logits: Tensor, how: str = "sampled", generator: torch.Generator | None = None) -> Tensor:
    """Target class per sample, (B,) int64.

    ``sampled``: drawn among all classes but the teacher's top-1, with probability
    proportional to the teacher's softmax (one batched draw, ``torch.multinomial``'s for one sample, using
    ``generator`` if given).  The base samples are ones the teacher classifies correctly, so
    the true class is the excluded top-1.  ``runner_up``: the teacher's second-highest class.
    """
    if how not in ATTACK_CLASSES:
        raise KdpipeError(f"attack_class: got {how!r}; allowed: {', '.join(ATTACK_CLASSES)}")
    if t_logits.dim() != 2 or t_logits.shape[1] < 2:
        raise KdpipeError(f"attack_class: need (batch, classes >= 2) logits; got shape {tuple(t_logits.shape)}")
    t_logits = t_logits.detach()
    if how == "runner_up":
        return t_logits.topk(2, dim=1).indices[:, 1]
    # Softmax over the logits with the top-1 masked out = the teacher's softmax
    # renormalised over the other classes, without underflowing to an all-zero row.
    top1 = t_logits.argmax(dim=1, keepdim=True)
    masked = t_logits.float().scatter(1, top1, float("-inf"))
    probs = F.softmax(masked, dim=1)
    # one draw per row by the exponential race, argmax_c p_c / E_c with E_c ~ Exp(1): what torch.multinomial
    # computes for one sample (the same random numbers, the same classes), without the host-side check of
    # the probabilities it makes first, which a CUDA graph cannot hold
    race = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return (probs / race).argmax(dim=1)


def attack_bounds(how: str, mean, std) -> tuple[Tensor, Tensor]:
    """Per-channel (C,) ``(lower, upper)`` clamp of the adversarial samples, for data normalised by ``mean``/``std``.

    ``normalized``: ``-2.5`` and ``2.5`` on every channel.  ``image``: the normalised image
    range, ``(0 - mean) / std`` and ``(1 - mean) / std``.
    """
    if how not in ATTACK_CLAMPS:
        raise KdpipeError(f"attack_clamp: got {how!r}; allowed: {', '.join(ATTACK_CLAMPS)}")
    mean = torch.as_tensor(mean, dtype=torch.float32)
    std = torch.as_tensor(std, dtype=torch.float32)
    if how == "normalized":
        return torch.full_like(mean, -NORMALIZED_BOUND), torch.full_like(mean, NORMALIZED_BOUND)
    return (0 - mean) / std, (1 - mean) / std


def _channel_view(bound: Tensor, like: Tensor) -> Tensor:
    """A per-channel (C,) bound shaped to broadcast against ``like`` (B, C, ...)."""
    return bound.to(device=like.device, dtype=like.dtype).view(1, -1, *([1] * (like.dim() - 2)))


def boundary_attack(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor,
    steps: int = 10,
    step_size: float = 0.3,
    eps: float = 1e-4,
    lower: Tensor | None = None,
    upper: Tensor | None = None,
    valid: Tensor | None = None,
) -> Tensor:
    """Push ``x`` toward the teacher's boundary between ``y`` and ``target``.

    Each of the ``steps`` iterations computes ``p = softmax(model(x_adv).logits)``,
    ``L = sum_b (p[b, target_b] - p[b, y_b])`` and ``g = dL/dx_adv``; samples the model
    still assigns to ``y_b`` move by ``step_size * (p[b, y_b] - p[b, target_b] + eps) *
    g_b / ||g_b||_2``, the others stay put.  Then, as in KD-Zoo's and the official BSS
    attack, the whole batch is clamped to the per-channel ``[lower, upper]`` (shape (C,),
    when given) -- in every step in which at least one sample still moved (the reference
    stops once none does).  Rows where ``valid`` (B,) bool is False (padding of a fixed-size
    batch) never move and do not count as moving.  Only ``x_adv`` is differentiated, so the model's parameters get
    no ``.grad``.  The model is used as given (eval mode is the caller's job).  Returns the
    detached adversarial batch.
    """
    y_col = y.view(-1, 1).to(torch.long)
    t_col = target.view(-1, 1).to(torch.long)
    lo = _channel_view(lower, x) if lower is not None else None
    hi = _channel_view(upper, x) if upper is not None else None
    bshape = (-1,) + (1,) * (x.dim() - 1)
    x_adv = x.detach().clone()
    for _ in range(steps):
        with torch.enable_grad():
            x_var = x_adv.requires_grad_(True)
            logits = model(x_var).logits
            p = F.softmax(logits.float(), dim=1)
            p_y = p.gather(1, y_col).squeeze(1)
            p_k = p.gather(1, t_col).squeeze(1)
            (grad,) = torch.autograd.grad((p_k - p_y).sum(), x_var)
        x_adv = x_var.detach()
        active = logits.detach().argmax(dim=1) == y
        if valid is not None:
            active = active & valid
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12)
        coef = step_size * (p_y.detach() - p_k.detach() + eps) / norm
        coef = torch.where(active, coef, torch.zeros_like(coef)).to(x_adv.dtype)
        moved = x_adv + coef.view(bshape) * grad
        if lo is not None:
            moved = torch.maximum(moved, lo)
        if hi is not None:
            moved = torch.minimum(moved, hi)
        x_adv = torch.where(active.any(), moved, x_adv)
    return x_adv.detach()


def bss_kd_loss(s_logits: Tensor, t_logits: Tensor, T: float, valid: Tensor | None = None) -> Tensor:
    """``KL(softmax(t/T) || softmax(s/T))``, summed over classes, averaged over valid samples.

    The mean is ``sum over valid / max(number valid, 1)`` (0 when none is valid); no
    ``T^2`` factor.  ``t_logits`` are detached; ``valid`` None means all samples.
    """
    log_p_s = F.log_softmax(s_logits / T, dim=1)
    log_p_t = F.log_softmax(t_logits.detach() / T, dim=1)
    per_sample = F.kl_div(log_p_s, log_p_t, reduction="none", log_target=True).sum(dim=1)
    if valid is None:
        return per_sample.sum() / max(per_sample.shape[0], 1)
    w = valid.to(per_sample.dtype)
    return (per_sample * w).sum() / w.sum().clamp_min(1.0)


@contextlib.contextmanager
def subset_batch_norm(model: nn.Module, keep: Tensor) -> Iterator[None]:
    """Within the context, ``model``'s batch norm layers compute batch statistics over the kept rows only.

    ``keep`` (B,) bool marks the rows of every batch the model sees inside the context that
    count (the valid rows of a fixed-size, padded batch).  Each ``_BatchNorm`` layer that
    uses batch statistics (training mode, or no running statistics) then normalises with,
    per channel over the kept rows and all spatial positions (``n = kept rows x spatial
    size`` values),

        mean = sum_kept x / n,    var = sum_kept (x - mean)^2 / n,
        y = (x - mean) / sqrt(var + eps) * weight + bias,

    and, in training mode with running statistics, updates them as a forward of the kept
    rows alone would: ``running <- (1 - m) running + m stat`` with the unbiased variance
    ``var * n / (n - 1)``, ``m`` the layer's momentum (``None``: ``1 / num_batches_tracked``,
    the cumulative average), and ``num_batches_tracked + 1``.  The outputs and parameter
    gradients of the kept rows are therefore those of the kept rows run alone.  (A layer
    that sees a single value per channel, ``n = 1``, which ``F.batch_norm`` refuses in
    training, takes the unbiased variance as 0 here.)  When no row
    is kept, running statistics and ``num_batches_tracked`` stay as they are (``torch.where``
    on the device: nothing here synchronises with the host, so a CUDA graph can record it).

    Rows that are not kept are normalised with the (detached) statistics of the whole batch,
    as an ordinary training forward would do: their outputs stay finite -- callers weight
    them by 0, and ``0 * inf`` would be NaN -- and no gradient reaches the kept rows through
    them.  Statistics are computed in float32 (also for a bf16 input under autocast) and the
    output has the input's dtype; channels_last inputs keep their layout.  Layers in eval mode
    with running statistics are untouched.  Each layer's own ``forward`` is restored on exit,
    also when the body raises.
    """
    if keep.dim() != 1 or keep.dtype != torch.bool:
        raise ValueError(
            f"subset_batch_norm: keep must be a (batch,) bool tensor; got {keep.dtype} {tuple(keep.shape)}"
        )
    patched = []
    try:
        for layer in model.modules():
            if isinstance(layer, _BatchNorm):
                own = layer.__dict__.get("forward")  # an instance-level forward (a nested context's), if any
                layer.forward = _kept_rows_forward(layer, keep, layer.forward)
                patched.append((layer, own))
        yield
    finally:
        for layer, own in reversed(patched):
            if own is None:
                del layer.forward
            else:
                layer.forward = own


def _kept_rows_forward(layer: _BatchNorm, keep: Tensor, original):
    """``layer``'s forward under :func:`subset_batch_norm`; ``original`` where running statistics are used."""

    def forward(x: Tensor) -> Tensor:
        if not (layer.training or layer.running_mean is None):
            return original(x)
        layer._check_input_dim(x)
        if x.shape[0] != keep.shape[0]:
            raise ValueError(f"subset_batch_norm: keep has {keep.shape[0]} rows, the batch {x.shape[0]}")
        dims = [0, *range(2, x.dim())]
        channel = (1, -1) + (1,) * (x.dim() - 2)
        kept = keep.to(x.device).view((-1,) + (1,) * (x.dim() - 1))
        xf = x.float()
        count = keep.to(device=x.device, dtype=torch.float32).sum() * math.prod(x.shape[2:])  # n, on the device
        denom = count.clamp_min(1.0)
        mean = (xf * kept).sum(dims) / denom
        var = ((xf - mean.view(channel)).square() * kept).sum(dims) / denom
        with torch.no_grad():
            var_all, mean_all = torch.var_mean(xf, dims, correction=0)
        row_mean = torch.where(kept, mean.view(channel), mean_all.view(channel))
        row_var = torch.where(kept, var.view(channel), var_all.view(channel))
        y = (xf - row_mean) * torch.rsqrt(row_var + layer.eps)
        if layer.weight is not None:
            y = y * layer.weight.view(channel) + layer.bias.view(channel)
        if layer.training and layer.track_running_stats and layer.running_mean is not None:
            _update_running_stats(layer, mean.detach(), var.detach(), count)
        return y.to(x.dtype)

    return forward


@torch.no_grad()
def _update_running_stats(layer: _BatchNorm, mean: Tensor, var: Tensor, count: Tensor) -> None:
    """``layer``'s running statistics after a forward of ``count`` values per channel with batch ``mean`` and
    biased ``var``, as ``F.batch_norm`` updates them; unchanged when ``count`` is 0 (no host sync)."""
    any_kept = count > 0
    tracked = layer.num_batches_tracked
    if tracked is not None:
        tracked = tracked + any_kept.to(tracked.dtype)
    if layer.momentum is not None:
        factor = layer.momentum
    elif tracked is not None:
        factor = 1.0 / tracked.clamp_min(1).to(torch.float32)  # cumulative moving average
    else:
        factor = 0.0  # as _BatchNorm: no momentum and no batch counter leave the running statistics be
    unbiased = var * count / (count - 1.0).clamp_min(1.0)
    for running, stat in ((layer.running_mean, mean), (layer.running_var, unbiased)):
        updated = (1.0 - factor) * running + factor * stat.to(running.dtype)
        # through .data, as F.batch_norm updates them inside its kernel: an earlier training forward of this
        # step saved the running statistics for its backward (which does not read them in training mode),
        # and a version bump here would fail that backward
        running.data.copy_(torch.where(any_kept, updated, running))
    if tracked is not None:
        layer.num_batches_tracked.copy_(tracked)
