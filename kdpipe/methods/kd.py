"""``train_kd``: a student trained against a frozen teacher with one of the ``kd`` modes.

total loss = CE(student, y) + lambda_kd * L_mode + st_weight * L_st(T)

Two-stage modes (FSP, AB) first run an initialisation phase on the distillation loss
alone (``init_epochs``, default a quarter of ``epochs``; ``init_schedule steps``: lr x0.1,
then x0.01 and x0.001 for the last 40 %, KD-Zoo's; ``constant``: the lr throughout,
RepDistiller's ``helper/pretrain.py``), then ``epochs`` of cross-entropy training (plus the
optional soft target term).  As in KD-Zoo's ``train_kd.py``, both phases step ONE optimizer
(``init_optimizer shared``): the CE phase starts with the momentum the initialisation
built up, and the initialisation phase adds ``0 x CE`` so that, like there, the classifier
(untouched by the FSP/AB loss) gets zero gradients -- hence weight decay and a momentum
buffer -- rather than none.  ``init_optimizer separate`` gives the CE phase a fresh
optimizer; ``features`` too, and drops the ``0 x CE`` term, so that the initialisation
trains only the student's stem and stages and the connector, what RepDistiller's init optimizer
holds (``get_feat_modules()``): the head after the last stage (classifier; WRN's final
BatchNorm, which AB's last term reads) keeps its initial weights and stays in eval mode, as
there.  The student is built first after seeding, so it starts from the same
weights as the baseline of the same seed.
"""

from __future__ import annotations

import torch

from ..engine import Context, default_milestones, lr_factor, make_optimizer, make_scheduler
from ..errors import KdpipeError
from ..losses import LOSSES, DistillBatch
from ..options import MODE_SETTINGS, TWO_STAGE_SETTINGS, find_option
from ..models import FeatureTaps, head_modules
from ..runner import run_entry
from .common import cache_input, settle_form as common_settle_form
from .student import StudentTask, Term


def init_phase_factor(epoch: int, init_epochs: int, schedule: str = "steps") -> float:
    """lr multiplier in the two-stage initialisation phase: ``steps`` 0.1 (60 %), 0.01 (20 %), 0.001 (20 %);
    ``constant`` 1."""
    if schedule == "constant":
        return 1.0
    if epoch < round(0.6 * init_epochs):
        return 0.1
    if epoch < round(0.8 * init_epochs):
        return 0.01
    return 0.001


def init_epochs_of(opts: dict) -> int:
    """A two-stage mode's initialisation epochs: ``init_epochs``, by default a quarter of ``epochs`` (at least 1)."""
    return opts["init_epochs"] if opts.get("init_epochs") is not None else max(1, round(opts["epochs"] / 4))


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


class DistillTask(StudentTask):
    method = "kd"

    @classmethod
    def cache_taps_of(cls, opts: dict) -> frozenset | None:
        loss_cls = LOSSES[opts["kd_mode"]]
        return frozenset(loss_cls.teacher_taps) if loss_cls.cacheable() else None

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts = ctx.opts
        self.mode = opts["kd_mode"]
        loss_cls = LOSSES[self.mode]
        self.loss = loss_cls(
            self.student_shapes, self.teacher_shapes, teacher_model=self.teacher, **mode_settings(opts)
        ).to(ctx.device)
        self.cache_taps = self.cache_taps_of(opts)
        self.open_teacher_cache(
            f"teacher_cache: kd_mode {self.mode} reads the teacher's {', '.join(sorted(loss_cls.teacher_taps))}; "
            f"a cache serves only the modes {', '.join(CACHEABLE_MODES)}"
        )
        self.lambda_kd = float(self.loss.settings["lambda_kd"])
        self.T = float(opts["T"] if opts["T"] is not None else LOSSES["st"].defaults["T"])
        self.extra_modules["loss"] = self.loss
        params = list(self.roles["student"].parameters()) + list(self.loss.parameters())
        self.optimizers["student"] = make_optimizer(params, opts)
        self.init_epochs = 0
        self.init_optimizer = opts["init_optimizer"]
        # init_optimizer features: the init phase leaves the student's head alone -- out of its optimizer and
        # in eval mode (RepDistiller's helper/pretrain.py: model_s.eval(), then train() and SGD over
        # get_feat_modules() and the connector only); on WRN the AB loss reads the head's BatchNorm
        self.frozen_head = head_modules(self.roles["student"]) if self.init_optimizer == "features" else []
        self.init_schedule = opts["init_schedule"]
        schedule = self.init_schedule
        if loss_cls.two_stage:
            self.init_epochs = init_epochs_of(opts)
        n = self.init_epochs
        if n and self.init_optimizer == "shared":
            # one optimizer and one schedule over both phases: the init phase's factors, then the CE phase's
            milestones = opts.get("milestones") or default_milestones(opts["epochs"])
            warmup = opts.get("warmup_epochs") or 0

            def factor(e: int) -> float:
                return init_phase_factor(e, n, schedule) if e < n else lr_factor(e - n, milestones, warmup)

            self.schedulers["student"] = torch.optim.lr_scheduler.LambdaLR(self.optimizers["student"], factor)
        else:
            self.schedulers["student"] = make_scheduler(self.optimizers["student"], opts)
        if n and self.init_optimizer in ("separate", "features"):
            held = {id(p) for module in self.frozen_head for p in module.parameters()}
            init_opt = make_optimizer([p for p in params if id(p) not in held], opts)
            self.optimizers["init"] = init_opt
            self.schedulers["init"] = torch.optim.lr_scheduler.LambdaLR(
                init_opt, lambda e: init_phase_factor(e, n, schedule)
            )

    # -- phases
    def in_init_phase(self, epoch: int) -> bool:
        return epoch < self.init_epochs

    def total_epochs(self) -> int:
        return self.init_epochs + self.ctx.opts["epochs"]

    def selectable(self, epoch: int) -> bool:
        return not self.in_init_phase(epoch)

    def on_epoch_start(self, epoch: int) -> None:
        self._epoch = epoch
        if self.roles["student"].training and self.in_init_phase(epoch):  # after train(True), which starts an epoch
            for module in self.frozen_head:
                module.train(False)

    def step_optimizer(self, epoch: int) -> str:
        return "init" if self.in_init_phase(epoch) and "init" in self.optimizers else "student"

    def on_epoch_end(self, epoch: int) -> None:
        self.schedulers[self.step_optimizer(epoch)].step()

    def current_lr(self) -> float:
        return float(self.optimizers[self.step_optimizer(getattr(self, "_epoch", 0))].param_groups[0]["lr"])

    # -- one batch
    @classmethod
    def replays(cls, opts):
        return super().replays(opts) and LOSSES[opts["kd_mode"]].capturable

    def step_values(self, epoch):
        loss_epoch = epoch if self.in_init_phase(epoch) else epoch - self.init_epochs
        return (self.in_init_phase(epoch), self.loss.capture_key(loss_epoch))

    def teacher_taps(self, x, index, view_ids):
        if self.cache is None and self.loss.teacher_grad:
            with torch.enable_grad():
                return self.teacher(x)
        return super().teacher_taps(x, index, view_ids)

    def terms(self, x, y, index, view_ids, epoch):
        student, loss_fn = self.roles["student"], self.loss
        init_phase = self.in_init_phase(epoch)
        if loss_fn.input_grad:
            x = x.detach().requires_grad_(True)
        # after a two-stage mode's initialisation the teacher is only needed for soft targets
        teacher_needed = init_phase or not loss_fn.two_stage or self.st_weight > 0
        with self.ctx.autocast():
            s_taps = student(x)
            t_taps = self.teacher_taps(x, index, view_ids) if teacher_needed else None
        ce = self.ce(s_taps.logits, y)
        needs_graph = loss_fn.teacher_grad or loss_fn.input_grad or not teacher_needed
        s_in, t_in = (s_taps, t_taps) if needs_graph else (float_taps(s_taps), float_taps(t_taps))
        if init_phase:
            batch = DistillBatch(x, y, index, student, self.teacher, epoch)
            distill = Term(self.mode, self.lambda_kd, loss_fn(s_in, t_in, batch))
            if self.init_optimizer == "features":  # no gradient at all where the loss does not reach, as RepDistiller
                return s_taps.logits, [distill]
            # 0 x CE: zero (not absent) gradients for what the distillation loss does not reach, as KD-Zoo
            return s_taps.logits, [distill, ce._replace(weight=0.0)]
        terms = [ce]
        if not loss_fn.two_stage and self.lambda_kd > 0:
            batch = DistillBatch(x, y, index, student, self.teacher, epoch - self.init_epochs)
            terms.append(Term(self.mode, self.lambda_kd, loss_fn(s_in, t_in, batch)))
        return s_taps.logits, terms + self.soft_target_terms(s_taps.logits, t_taps.logits if t_taps else None)

    # -- reporting
    def method_name(self) -> str:
        return self.mode

    def init_phase_settings(self) -> dict:
        """A two-stage run's init-phase optimizer and schedule; nothing for the other modes."""
        if not self.init_epochs:
            return {}
        return {"init_optimizer": self.init_optimizer, "init_schedule": self.init_schedule}

    def method_settings(self) -> dict:
        two_stage = {"init_epochs": self.init_epochs, **self.init_phase_settings()} if self.init_epochs else {}
        return {**self.loss.settings, **two_stage}

    def method_info(self) -> dict:
        return {
            "loss": self.loss.describe(),
            "lambda_kd": self.lambda_kd,
            "st_weight": self.st_weight,
            "T": self.T,
            "init_epochs": self.init_epochs,
            **self.init_phase_settings(),
            **self.teacher_source(),
        }


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


def settle_form(opts: dict) -> None:
    """``form``: the mode's revision where it has been revised (:func:`kdpipe.methods.common.settle_form`)."""
    mode = LOSSES[opts["kd_mode"]]
    common_settle_form(opts, mode.revisions, f"kd_mode {mode.name}")


def check_mode_flags(opts: dict) -> None:
    """A mode option the chosen mode does not read (``--p`` with st) would be silently ignored: refused.
    ``T`` also sets the st_weight term's temperature, and the init phase's options serve the two-stage
    modes (those with a default are refused elsewhere only when set to another value)."""
    mode = LOSSES[opts["kd_mode"]]
    phase = TWO_STAGE_SETTINGS if mode.two_stage else ()
    for key in (*MODE_SETTINGS, *TWO_STAGE_SETTINGS):
        unset = opts.get(key) is None or opts[key] == find_option("kd", key).default
        if unset or key in mode.defaults or key in phase or (key == "T" and opts.get("st_weight")):
            continue
        reads = ", ".join([*mode.defaults, *phase])
        also = " (T also sets the temperature of an --st_weight term)" if key == "T" else ""
        raise KdpipeError(f"{key}: not a setting of kd_mode {mode.name}, which reads {reads}{also}")


def settle(opts: dict) -> None:
    check_mode_flags(opts)
    settle_form(opts)


def train_kd(**kwargs) -> dict:
    """Distil ``t_model`` (a ``t_name`` network) into an ``s_name`` student with ``kd_mode``.

    Keyword arguments are the flags of ``python -m kdpipe kd``; returns the run record.
    """
    return run_entry(
        "kd",
        kwargs,
        DistillTask,
        default_note=lambda o: f"kd-{o['kd_mode']}-{_slug(o['data_name'])}-{o['t_name']}-{o['s_name']}-seed{o['seed']}",
        input_files=lambda o: {
            "t_model": o["t_model"],
            "s_init": o.get("s_init"),
            **cache_input(o, DistillTask.cache_taps_of(o)),
        },
        settle=settle,
    )
