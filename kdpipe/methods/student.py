"""The one teacher–student task: what kd, ft, crd and bss share.

A method declares only its loss terms (and the learned modules they need).  This base does
the rest, once:

* the student is built first after seeding (so it starts from the baseline's weights of the
  same seed), or loaded from ``s_init``;
* the teacher is loaded from ``t_model``, verified against ``t_name`` and the data's classes,
  frozen, and its test accuracy recorded;
* the teacher cache (``teacher_cache``) replaces the live teacher where the method reads only
  cached taps, and is refused with one line where it does not;
* the run's identity (method, variant, teacher, student, generation);
* the objective: a weighted sum of named terms, in order -- ``ce`` (weight ``ce_weight``, 1), the method's
  terms, and ``st`` (Hinton's soft targets at ``T``, weight ``st_weight``) where the method
  offers the ``+st`` variant;
* the optimizer: KD-Zoo's SGD, or with ``dot_delta`` DOT (:mod:`kdpipe.dot`), which takes the
  task gradient (the ``ce`` terms) and the distillation gradient (all other terms) from two
  backward passes; a DOT run's variant ends in ``+dot``.

Adding a method is a subclass that implements :meth:`StudentTask.terms` (plus its entry
declaration in :mod:`kdpipe.options`); a new ``kd`` mode is only a loss module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..dot import DOT, check_dot_options
from ..engine import Context, StepResult, Task, make_optimizer, make_scheduler
from ..errors import KdpipeError
from ..losses import TapShapes
from ..losses.base import CACHED_TAPS
from ..losses.st import soft_target_loss
from ..models import build_model
from .common import cached_taps, load_network, load_teacher, open_cache, teacher_data, teacher_test_accuracy


class Term(NamedTuple):
    """One named, weighted part of a student's objective."""

    name: str
    weight: float
    value: Tensor


def weighted_sum(terms: list[Term]) -> Tensor:
    """sum_i weight_i * value_i, left to right; a weight of exactly 1 is not multiplied (same bits)."""
    total = None
    for term in terms:
        part = term.value if term.weight == 1.0 else term.weight * term.value
        total = part if total is None else total + part
    if total is None:
        raise ValueError("an objective needs at least one term")
    return total


class StudentTask(Task):
    """A student trained against a frozen teacher; subclasses declare :meth:`terms`."""

    method = ""
    # Teacher taps the method reads through the cache when one is given (cache_taps_of(opts)); None: it cannot.
    cache_taps: frozenset | None = None

    @classmethod
    def cache_taps_of(cls, opts: dict) -> frozenset | None:
        """The teacher taps a run with ``opts`` reads through a cache (None: it cannot use one): what it loads,
        and so which of the cache's manifests it is fingerprinted by (:func:`.common.cache_input`)."""
        return None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        check_dot_options(opts)
        student = self.build_student()
        self.teacher = load_teacher(ctx)
        self.teacher_acc = teacher_test_accuracy(self.teacher, ctx)
        self.teacher_data = teacher_data(opts["t_model"], data)
        self.student_shapes = TapShapes.probe(student, data.image_shape)
        self.teacher_shapes = TapShapes.probe(self.teacher, data.image_shape)
        self.roles["student"] = student
        self.st_weight = float(opts.get("st_weight") or 0.0)
        self.ce_weight = 1.0 if opts.get("ce_weight") is None else float(opts["ce_weight"])
        self.T = opts.get("T")
        if self.st_weight > 0 and self.student_shapes.num_classes != self.teacher_shapes.num_classes:
            raise KdpipeError("st_weight: soft targets need teacher and student with the same classes")
        self.cache = None

    # -- construction
    def build_student(self) -> nn.Module:
        """``s_init`` weights if given, else the seeded initialisation."""
        opts, ctx = self.ctx.opts, self.ctx
        if opts.get("s_init"):
            model = load_network(opts["s_init"], opts["s_name"], ctx.data.num_classes, "s_init")
        else:
            model = build_model(opts["s_name"], ctx.data.num_classes)
        return ctx.prepare(model)

    def open_teacher_cache(self, refusal: str = "") -> None:
        """Read the teacher from ``teacher_cache`` when one is given (call after the method's modules)."""
        if not self.ctx.opts.get("teacher_cache"):
            return
        taps = self.cache_taps
        if taps is None or not taps <= CACHED_TAPS:
            raise KdpipeError(refusal or f"teacher_cache: {self.method} reads more of the teacher than a cache holds")
        self.cache = open_cache(self.ctx, need_embedding="embedding" in taps)

    def train_student_with(self, *modules: nn.Module) -> None:
        """One SGD optimizer and schedule over the student and the method's learned modules."""
        params = list(self.roles["student"].parameters())
        for module in modules:
            params += list(module.parameters())
        self.optimizers["student"] = make_optimizer(params, self.ctx.opts)
        self.schedulers["student"] = make_scheduler(self.optimizers["student"], self.ctx.opts)

    # -- one batch
    def teacher_taps(self, x: Tensor, index: Tensor, view_ids: Tensor):
        """The teacher's taps of this batch: from the cache, or a live forward without gradients."""
        if self.cache is not None:
            return cached_taps(self.cache, index, view_ids)
        with torch.no_grad():
            return self.teacher(x)

    def soft_target_terms(self, s_logits: Tensor, t_logits: Tensor) -> list[Term]:
        """The ``+st`` term, when ``st_weight`` > 0."""
        if self.st_weight <= 0:
            return []
        return [Term("st", self.st_weight, soft_target_loss(s_logits.float(), t_logits.float().detach(), self.T))]

    def terms(self, x: Tensor, y: Tensor, index: Tensor, view_ids: Tensor, epoch: int) -> tuple[Tensor, list[Term]]:
        """The student's logits on ``x`` and the named terms of its objective for this batch."""
        raise NotImplementedError

    def step_optimizer(self, epoch: int) -> str:
        return "student"

    @classmethod
    def replays(cls, opts):
        return opts.get("dot_delta") is None  # DOT holds one gradient while it computes the other

    def capture_key(self, epoch):
        if not self.replays(self.ctx.opts):
            return None
        return (self.step_optimizer(epoch), *self.step_values(epoch))

    def step_values(self, epoch: int) -> tuple:
        """The Python values the method's terms bake into a captured step in ``epoch`` (see :meth:`capture_key`)."""
        return ()

    def train_step(self, x, y, index, view_ids, epoch):
        logits, terms = self.terms(x, y, index, view_ids, epoch)
        name = self.step_optimizer(epoch)
        if isinstance(self.optimizers[name], DOT):
            return self.optimize_dot(terms, name, "student", logits, y)
        return self.optimize(weighted_sum(terms), name, "student", logits, y)

    def optimize_dot(self, terms: list[Term], optimizer: str, role: str, logits: Tensor, y: Tensor) -> dict:
        """One DOT update: the distillation terms' gradient (backward first, keeping the graph), then the
        ``ce`` terms' (mdistiller's order); the step result reports their weighted sum, as with SGD."""
        opt = self.optimizers[optimizer]
        task = [t for t in terms if t.name == "ce"]
        distill = [t for t in terms if t.name != "ce"]
        opt.zero_grad(set_to_none=True)
        if distill:
            distill_loss = weighted_sum(distill)
            if distill_loss.requires_grad:  # e.g. bss with no boundary sample in the batch: none this step
                distill_loss.backward(retain_graph=bool(task))
                opt.hold_distillation_grads()
        if task:
            weighted_sum(task).backward()
        opt.step()
        with torch.no_grad():
            loss = weighted_sum(terms)
        return {role: StepResult(loss, (logits.argmax(1) == y).sum())}

    def ce(self, logits: Tensor, y: Tensor) -> Term:
        return Term("ce", self.ce_weight, F.cross_entropy(logits.float(), y))

    # -- reporting
    def method_name(self) -> str:
        return self.method

    def variant(self) -> str:
        return "+st" if self.st_weight > 0 else ""

    def generation(self) -> int | None:
        return None

    def uses_dot(self) -> bool:
        return self.ctx.opts.get("dot_delta") is not None

    def identity(self, role):
        opts = self.ctx.opts
        return {
            "method": self.method_name(),
            "variant": self.variant() + ("+dot" if self.uses_dot() else ""),
            "teacher": opts["t_name"],
            "student": opts["s_name"],
            "generation": self.generation(),
        }

    def info(self) -> dict:
        teacher = {"name": self.ctx.opts["t_name"], "test_acc": self.teacher_acc, "data": self.teacher_data}
        ce = {"ce_weight": self.ce_weight} if self.ctx.opts.get("ce_weight") is not None else {}
        return {"teacher": teacher, **self.method_info(), **ce, **self.optimizer_info()}

    def optimizer_info(self) -> dict:
        """``optimizer`` sgd (KD-Zoo's, Nesterov) or dot, with DOT's delta and the two momenta it gives."""
        opts = self.ctx.opts
        if not self.uses_dot():
            return {"optimizer": "sgd"}
        delta = opts["dot_delta"]
        return {
            "optimizer": "dot",
            "dot_delta": delta,
            "dot_single": opts.get("dot_single") or "base",
            "momentum_task": opts["momentum"] - delta,
            "momentum_distill": opts["momentum"] + delta,
        }

    def settings(self) -> dict:
        pairs = dict(self.method_settings())
        if self.st_weight > 0:
            pairs["st_weight"] = self.st_weight
            pairs.setdefault("T", self.T)
        if self.ctx.opts.get("ce_weight") is not None:
            pairs["ce_weight"] = self.ce_weight
        if self.uses_dot():
            pairs["dot_delta"] = self.ctx.opts["dot_delta"]
            if self.ctx.opts.get("dot_single") == "own":
                pairs["dot_single"] = "own"
        if self.cache is not None:
            pairs["teacher"] = "cache"
        return pairs

    def method_settings(self) -> dict:
        """The method's own distinguishing settings (λ first), before the shared ones."""
        return {}

    def method_info(self) -> dict:
        """The method's own facts for ``run.json`` (after the teacher's)."""
        return {}

    def teacher_source(self) -> dict:
        return {"teacher_source": "cache" if self.cache is not None else "live"}
