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
* the objective: a weighted sum of named terms, in order -- ``ce`` (weight 1), the method's
  terms, and ``st`` (Hinton's soft targets at ``T``, weight ``st_weight``) where the method
  offers the ``+st`` variant.

Adding a method is a subclass that implements :meth:`StudentTask.terms` (plus its entry
declaration in :mod:`kdpipe.options`); a new ``kd`` mode is only a loss module.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..engine import Context, Task, make_optimizer, make_scheduler
from ..errors import KdpipeError
from ..losses import TapShapes
from ..losses.base import CACHED_TAPS
from ..losses.st import soft_target_loss
from ..models import build_model
from .common import cached_taps, load_teacher, open_cache, teacher_test_accuracy, load_network


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
    # Teacher taps the method reads through the cache when one is given; None: it cannot use a cache.
    cache_taps: frozenset | None = None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        student = self.build_student()
        self.teacher = load_teacher(ctx)
        self.teacher_acc = teacher_test_accuracy(self.teacher, ctx)
        self.student_shapes = TapShapes.probe(student, data.image_shape)
        self.teacher_shapes = TapShapes.probe(self.teacher, data.image_shape)
        self.roles["student"] = student
        self.st_weight = float(opts.get("st_weight") or 0.0)
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

    def train_step(self, x, y, index, view_ids, epoch):
        logits, terms = self.terms(x, y, index, view_ids, epoch)
        return self.optimize(weighted_sum(terms), self.step_optimizer(epoch), "student", logits, y)

    @staticmethod
    def ce(logits: Tensor, y: Tensor) -> Term:
        return Term("ce", 1.0, F.cross_entropy(logits.float(), y))

    # -- reporting
    def method_name(self) -> str:
        return self.method

    def variant(self) -> str:
        return "+st" if self.st_weight > 0 else ""

    def generation(self) -> int | None:
        return None

    def identity(self, role):
        opts = self.ctx.opts
        return {
            "method": self.method_name(),
            "variant": self.variant(),
            "teacher": opts["t_name"],
            "student": opts["s_name"],
            "generation": self.generation(),
        }

    def info(self) -> dict:
        return {"teacher": {"name": self.ctx.opts["t_name"], "test_acc": self.teacher_acc}, **self.method_info()}

    def method_info(self) -> dict:
        """The method's own facts for ``run.json`` (after the teacher's)."""
        return {}

    def teacher_source(self) -> dict:
        return {"teacher_source": "cache" if self.cache is not None else "live"}
