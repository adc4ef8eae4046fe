"""``train_kd``: a student trained against a frozen teacher with one of the 17 ``kd`` modes.

total loss = CE(student, y) + lambda_kd * L_mode + st_weight * L_st(T)

Two-stage modes (FSP, AB) first run an initialisation phase on the distillation loss
alone (``init_epochs``, default a quarter of ``epochs``; lr x0.1, then x0.01 and x0.001
for the last 40 %), then ``epochs`` of cross-entropy training (plus the optional soft
target term).  As in KD-Zoo's ``train_kd.py``, both phases step ONE optimizer
(``init_optimizer shared``): the CE phase starts with the momentum the initialisation
built up, and the initialisation phase adds ``0 x CE`` so that, like there, the classifier
(untouched by the FSP/AB loss) gets zero gradients -- hence weight decay and a momentum
buffer -- rather than none.  ``init_optimizer separate`` gives the CE phase a fresh
optimizer.  The student is built first after seeding, so it starts from the same
weights as the baseline of the same seed.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import Context, Task, default_milestones, lr_factor, make_optimizer, make_scheduler
from ..errors import KdpipeError
from ..losses import LOSSES, DistillBatch, TapShapes
from ..losses.st import soft_target_loss
from ..options import MODE_SETTINGS
from ..models import FeatureTaps
from ..runner import run_entry
from .common import cache_input, cached_taps, frozen, load_network, open_cache, teacher_test_accuracy


def init_phase_factor(epoch: int, init_epochs: int) -> float:
    """lr multiplier in the two-stage initialisation phase: 0.1 (60 %), 0.01 (20 %), 0.001 (20 %)."""
    if epoch < round(0.6 * init_epochs):
        return 0.1
    if epoch < round(0.8 * init_epochs):
        return 0.01
    return 0.001


def _float(t):
    return None if t is None else t.float()


def float_taps(taps: FeatureTaps) -> FeatureTaps:
    return FeatureTaps(
        _float(taps.stem),
        tuple(t.float() for t in taps.stages_pre),
        tuple(t.float() for t in taps.stages),
        _float(taps.embedding),
        _float(taps.logits),
    )


CACHEABLE_MODES = tuple(m for m, cls in LOSSES.items() if cls.cacheable())


def mode_settings(opts: dict) -> dict:
    """The settings a mode reads, with the user's overrides; unset values fall back to the mode's defaults."""
    loss_cls = LOSSES[opts["kd_mode"]]
    settings = {k: opts[k] for k in MODE_SETTINGS if k in loss_cls.defaults and opts.get(k) is not None}
    settings["lambda_kd"] = opts["lambda_kd"]
    return {k: v for k, v in settings.items() if v is not None}


class DistillTask(Task):
    method = "kd"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        self.mode = opts["kd_mode"]
        loss_cls = LOSSES[self.mode]
        student = build_student(ctx)
        teacher = frozen(ctx.prepare(load_network(opts["t_model"], opts["t_name"], data.num_classes, "t_model")))
        self.teacher = teacher
        self.teacher_acc = teacher_test_accuracy(teacher, ctx)
        shapes_s = TapShapes.probe(student, data.image_shape)
        shapes_t = TapShapes.probe(teacher, data.image_shape)
        self.loss = loss_cls(shapes_s, shapes_t, teacher_model=teacher, **mode_settings(opts)).to(ctx.device)
        if opts["teacher_cache"] and not loss_cls.cacheable():
            raise KdpipeError(
                f"teacher_cache: kd_mode {self.mode} reads the teacher's {', '.join(sorted(loss_cls.teacher_taps))}; "
                f"a cache serves only the modes {', '.join(CACHEABLE_MODES)}"
            )
        self.cache = open_cache(ctx, need_embedding="embedding" in loss_cls.teacher_taps)
        self.lambda_kd = float(self.loss.settings["lambda_kd"])
        self.st_weight = float(opts["st_weight"])
        self.T = float(opts["T"] if opts["T"] is not None else LOSSES["st"].defaults["T"])
        if self.st_weight > 0 and shapes_s.num_classes != shapes_t.num_classes:
            raise KdpipeError("st_weight: soft targets need teacher and student with the same classes")
        self.roles["student"] = student
        self.extra_modules["loss"] = self.loss
        params = list(student.parameters()) + list(self.loss.parameters())
        self.optimizers["student"] = make_optimizer(params, opts)
        self.init_epochs = 0
        self.init_optimizer = opts["init_optimizer"]
        if loss_cls.two_stage:
            self.init_epochs = (
                opts["init_epochs"] if opts["init_epochs"] is not None else max(1, round(opts["epochs"] / 4))
            )
        n = self.init_epochs
        if n and self.init_optimizer == "shared":
            # one optimizer and one schedule over both phases: the init phase's factors, then the CE phase's
            milestones = opts.get("milestones") or default_milestones(opts["epochs"])
            warmup = opts.get("warmup_epochs") or 0

            def factor(e: int) -> float:
                return init_phase_factor(e, n) if e < n else lr_factor(e - n, milestones, warmup)

            self.schedulers["student"] = torch.optim.lr_scheduler.LambdaLR(self.optimizers["student"], factor)
        else:
            self.schedulers["student"] = make_scheduler(self.optimizers["student"], opts)
        if n and self.init_optimizer == "separate":
            init_opt = make_optimizer(params, opts)
            self.optimizers["init"] = init_opt
            self.schedulers["init"] = torch.optim.lr_scheduler.LambdaLR(init_opt, lambda e: init_phase_factor(e, n))

    # -- phases
    def in_init_phase(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def total_epochs(self) -> int:
        return self.init_epochs + self.ctx.opts["epochs"]

    def selectable(self, epoch: int) -> bool:
        return not self.in_init_phase(epoch)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch

    def _phase_optimizer(self, epoch: int) -> str:
        return "init" if self.in_init_phase(epoch) and "init" in self.optimizers else "student"

    def on_epoch_end(self, epoch: int) -> None:
        self.schedulers[self._phase_optimizer(epoch)].step()

    def current_lr(self) -> float:
        return float(self.optimizers[self._phase_optimizer(getattr(self, "_epoch", 0))].param_groups[0]["lr"])

    # -- one batch
    def teacher_forward(self, x):
        if self.loss.teacher_grad:
            with torch.enable_grad():
                return self.teacher(x)
        with torch.no_grad():
            return self.teacher(x)

    def train_step(self, x, y, index, view_ids, epoch):
        student, loss_fn = self.roles["student"], self.loss
        init_phase = self.in_init_phase(epoch)
        if loss_fn.input_grad:
            x = x.detach().requires_grad_(True)
        # after a two-stage mode's initialisation the teacher is only needed for soft targets
        teacher_needed = init_phase or not loss_fn.two_stage or self.st_weight > 0
        with self.ctx.autocast():
            s_taps = student(x)
            if not teacher_needed:
                t_taps = None
            elif self.cache is not None:
                t_taps = cached_taps(self.cache, index, view_ids)
            else:
                t_taps = self.teacher_forward(x)
        ce = F.cross_entropy(s_taps.logits.float(), y)
        needs_graph = loss_fn.teacher_grad or loss_fn.input_grad or not teacher_needed
        s_in, t_in = (s_taps, t_taps) if needs_graph else (float_taps(s_taps), float_taps(t_taps))
        batch = DistillBatch(x, y, index, student, self.teacher, epoch - self.init_epochs if not init_phase else epoch)
        if init_phase:
            # 0 x CE: zero (not absent) gradients for what the distillation loss does not reach, as KD-Zoo
            total = self.lambda_kd * loss_fn(s_in, t_in, batch) + 0.0 * ce
        else:
            total = ce
            if not loss_fn.two_stage and self.lambda_kd > 0:
                total = total + self.lambda_kd * loss_fn(s_in, t_in, batch)
            if self.st_weight > 0:
                total = total + self.st_weight * soft_target_loss(
                    s_taps.logits.float(), t_taps.logits.float().detach(), self.T
                )
        return self.optimize(total, self._phase_optimizer(epoch), "student", s_taps.logits, y)

    # -- reporting
    def identity(self, role):
        return {
            "method": self.mode,
            "variant": "+st" if self.st_weight > 0 else "",
            "teacher": self.ctx.opts["t_name"],
            "student": self.ctx.opts["s_name"],
            "generation": None,
        }

    def info(self) -> dict:
        return {
            "teacher": {"name": self.ctx.opts["t_name"], "test_acc": self.teacher_acc},
            "loss": self.loss.describe(),
            "lambda_kd": self.lambda_kd,
            "st_weight": self.st_weight,
            "T": self.T,
            "init_epochs": self.init_epochs,
            **({"init_optimizer": self.init_optimizer} if self.init_epochs else {}),
            "teacher_source": "cache" if self.cache is not None else "live",
        }


def build_student(ctx: Context):
    """The student: ``s_init`` weights if given, else the seeded initialisation."""
    from ..models import build_model

    opts = ctx.opts
    if opts.get("s_init"):
        model = load_network(opts["s_init"], opts["s_name"], ctx.data.num_classes, "s_init")
    else:
        model = build_model(opts["s_name"], ctx.data.num_classes)
    return ctx.prepare(model)


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def train_kd(**kwargs) -> dict:
    """Distil ``t_model`` (a ``t_name`` network) into an ``s_name`` student with ``kd_mode``.

    Keyword arguments are the flags of ``python -m kdpipe kd``; returns the run record.
    """
    return run_entry(
        "kd",
        kwargs,
        DistillTask,
        default_note=lambda o: f"kd-{o['kd_mode']}-{_slug(o['data_name'])}-{o['t_name']}-{o['s_name']}-seed{o['seed']}",
        input_files=lambda o: {"t_model": o["t_model"], "s_init": o.get("s_init"), **cache_input(o)},
    )
