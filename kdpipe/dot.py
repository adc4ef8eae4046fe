"""DOT, the Distillation-Oriented Trainer (Zhao et al., "DOT: A Distillation-Oriented Trainer", ICCV 2023).

SGD with two momentum buffers per parameter: one for the task loss's gradient (the ``ce`` terms), one
for the distillation loss's (every other term).  The distillation gradient gets the larger momentum,
``momentum + delta``, the task gradient the smaller, ``momentum - delta``.  The update follows the
implementation behind the published numbers, mdistiller's ``DistillationOrientedTrainer``
(``mdistiller/engine/dot.py``, function ``dot``; its trainer ``DOT`` in ``mdistiller/engine/trainer.py``
builds it with ``momentum = MOMENTUM - DELTA``, ``momentum_kd = MOMENTUM + DELTA``).  Per parameter
``p``, with lr ``lr``, weight decay ``wd``, task gradient ``g_t`` and distillation gradient ``g_d``
of this step (a parameter that a loss does not reach has no gradient from it)::

    both gradients:         v_t = (m - delta) v_t + (g_t + wd p);  p -= lr v_t
                            v_d = (m + delta) v_d + g_d;           p -= lr v_d
    only the task's:        v_t = m_t1 v_t + (g_t + wd p);         p -= lr v_t
    only the distillation:  v_d = m_d1 v_d + (g_d + wd p);         p -= lr v_d

``m_t1 = m_d1 = m`` with ``single="base"`` (mdistiller: ``(momentum_kd + momentum) / 2``), or the
loss's own ``m - delta`` / ``m + delta`` with ``single="own"`` (the paper's two update equations
applied to every parameter).  Weight decay rides on the task buffer wherever there is a task
gradient.  A buffer starts as its first step's term, as in ``torch.optim.SGD``, except that the
distillation buffer starts as ``g_d`` without ``wd p`` even for a distillation-only parameter
(mdistiller's order of operations; later steps add it).  Heavy-ball momentum: no Nesterov, no
dampening.  With ``delta = 0`` this is SGD with (non-Nesterov) momentum ``m`` in exact arithmetic,
not bit for bit (two gradients, two in-place updates).

The caller gives the two gradients by two backward passes: the distillation loss first (keeping the
graph), :meth:`DOT.hold_distillation_grads`, then the task loss and :meth:`DOT.step`.  A step without
held gradients treats every gradient as the task's.
"""

from __future__ import annotations

import torch

from .errors import KdpipeError

SINGLE_CHOICES = ("base", "own")


def check_dot_options(opts: dict) -> None:
    """One line naming the bad value when the DOT options do not fit together (or with ``momentum``)."""
    delta, single = opts.get("dot_delta"), opts.get("dot_single")
    if delta is None:
        if single is not None:
            raise KdpipeError(f"dot_single: got {single!r}, but DOT is off; it needs dot_delta")
        return
    momentum = opts["momentum"]
    if not 0 <= delta < momentum or momentum + delta >= 1:
        raise KdpipeError(
            f"dot_delta: got {delta!r}; with momentum {momentum:g} it must be >= 0 and < momentum, "
            "with momentum + dot_delta < 1 (both momenta in (0, 1))"
        )


class DOT(torch.optim.Optimizer):
    """SGD with separate momenta for the task and the distillation gradient (see the module docstring)."""

    def __init__(self, params, lr: float, momentum: float, delta: float, weight_decay: float = 0.0, single="base"):
        if lr <= 0 or weight_decay < 0:
            raise ValueError(f"DOT: lr {lr} must be > 0, weight_decay {weight_decay} >= 0")
        if not 0 <= delta < momentum or momentum + delta >= 1:
            raise ValueError(f"DOT: need 0 <= delta < momentum and momentum + delta < 1, got {delta}, {momentum}")
        if single not in SINGLE_CHOICES:
            raise ValueError(f"DOT: single must be one of {SINGLE_CHOICES}, got {single!r}")
        defaults = dict(lr=lr, momentum=momentum, delta=delta, weight_decay=weight_decay, single=single)
        super().__init__(params, defaults)

    @torch.no_grad()
    def hold_distillation_grads(self) -> None:
        """Take the gradients now in ``.grad`` as this step's distillation gradients and clear ``.grad``."""
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self.state[p]["distill_grad"] = p.grad
                    p.grad = None

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, m, delta, wd = group["lr"], group["momentum"], group["delta"], group["weight_decay"]
            m_task, m_distill = m - delta, m + delta
            own = group["single"] == "own"
            for p in group["params"]:
                state = self.state[p]
                g_distill = state.pop("distill_grad", None)
                g_task = p.grad
                if g_task is not None:
                    d_p = g_task.add(p, alpha=wd) if wd != 0 else g_task
                    buf = state.get("task_buffer")
                    if buf is None:
                        state["task_buffer"] = buf = torch.clone(d_p).detach()
                    else:
                        buf.mul_(m_task if g_distill is not None or own else m).add_(d_p)
                    p.add_(buf, alpha=-lr)
                if g_distill is not None:
                    buf = state.get("distill_buffer")
                    if buf is None:
                        state["distill_buffer"] = buf = torch.clone(g_distill).detach()
                    elif g_task is not None:
                        buf.mul_(m_distill).add_(g_distill)
                    else:
                        d_p = g_distill.add(p, alpha=wd) if wd != 0 else g_distill
                        buf.mul_(m_distill if own else m).add_(d_p)
                    p.add_(buf, alpha=-lr)
        return loss


def make_dot(params, opts: dict) -> DOT:
    """The DOT optimizer of a run's options (``dot_delta`` set)."""
    check_dot_options(opts)
    return DOT(
        params,
        lr=opts["lr"],
        momentum=opts["momentum"],
        delta=opts["dot_delta"],
        weight_decay=opts["weight_decay"],
        single=opts.get("dot_single") or "base",
    )
