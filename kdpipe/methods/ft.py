"""Factor transfer (Kim, Park & Kwak, NeurIPS 2018): ``train_ft_paraphraser`` and ``train_ft``.

1. A paraphraser (convolutional autoencoder, factor rate ``k``) is trained on the frozen
   teacher's last-stage feature map with a reconstruction loss.  In the workflow this is
   its own node (``paraphraser.pt``), so every FT student of the teacher reuses it.
   KD-Zoo's recipe is the default: 30 epochs of SGD at a constant lr of the students' lr / 10
   (0.01), momentum and weight decay as the students', without Nesterov; ``milestones``
   given to ``train_ft_paraphraser`` make it a step schedule instead.
2. The student trains with CE + lambda_kd * || F_s/||F_s|| - F_t/||F_t|| ||_1, where F_t is
   the paraphraser's factor of the teacher's map and F_s a learned translator's factor of
   the student's last stage (the translator trains with the student and is saved with it).
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from ..checkpoint import safe_load_state_dict
from ..engine import Context, Task, lr_factor
from ..errors import KdpipeError
from ..losses import TapShapes
from ..options import PARAPHRASER_REVISIONS, common_options, find_option, unless_default
from ..objectives.ft import Paraphraser, Translator, factor_channels, factor_transfer_loss, reconstruction_loss
from ..runner import run_entry
from .common import check_st_temperature, frozen, load_teacher, settle_form
from .student import StudentTask, Term


def _slug(name: str) -> str:
    return name.replace(":", "_").replace("/", "_")


FT_BN = find_option("ft", "ft_bn").choices


def use_batchnorm(setting: str, data_name: str) -> tuple[bool, bool]:
    """BN in (paraphraser, translator): ``on``/``off`` both, ``auto`` -- KD-Zoo's choice, both off on cifar100
    only -- or ``translator``: in the translator alone (RepDistiller's ``Translator(use_bn=True)`` beside its
    ``Paraphraser(use_bn=False)``)."""
    if setting not in FT_BN:
        raise KdpipeError(f"ft_bn: got {setting!r}; allowed: {', '.join(FT_BN)}")
    if setting == "translator":
        return False, True
    both = data_name != "cifar100" if setting == "auto" else setting == "on"
    return both, both


def bn_label(paraphraser: bool, translator: bool) -> str:
    """What a run records as its ``ft_bn``: ``on``/``off`` for both, else ``translator``."""
    return ("on" if paraphraser else "off") if paraphraser == translator else "translator"


def paraphraser_optimizer(params, opts: dict):
    """KD-Zoo's paraphraser optimizer: SGD with momentum and weight decay, no Nesterov; constant lr
    unless ``milestones`` are given (then x0.1 at each), after ``warmup_epochs`` at lr/10."""
    optimizer = torch.optim.SGD(
        params, lr=opts["lr"], momentum=opts["momentum"], weight_decay=opts["weight_decay"], nesterov=False
    )
    milestones, warmup = list(opts.get("milestones") or []), opts.get("warmup_epochs") or 0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, milestones, warmup))
    return optimizer, scheduler


class ParaphraserTask(Task):
    """Trains the paraphraser on the teacher's last-stage map; 'loss' on val/test is the reconstruction MSE.  The
    paraphraser kept is the last epoch's, as KD-Zoo and RepDistiller train and use it (not the lowest validation
    loss's: PARAPHRASER_REVISIONS)."""

    method = "ft-paraphraser"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.teacher = load_teacher(ctx)
        self.channels = TapShapes.probe(self.teacher, ctx.data.image_shape).stages[-1][0]
        opts = ctx.opts
        self.bn, _ = use_batchnorm(opts["ft_bn"], opts["data_name"])
        paraphraser = Paraphraser(self.channels, opts["k"], self.bn, opts["para_decoder_out"], opts["ft_init"])
        self.roles["paraphraser"] = ctx.prepare(paraphraser)
        optimizer, scheduler = paraphraser_optimizer(self.roles["paraphraser"].parameters(), opts)
        self.optimizers["paraphraser"], self.schedulers["paraphraser"] = optimizer, scheduler

    def teacher_map(self, x):
        with torch.no_grad(), self.ctx.autocast():
            return self.teacher(x).stages[-1].float()

    def train_step(self, x, y, index, view_ids, epoch):
        target = self.teacher_map(x)
        with self.ctx.autocast():
            _, reconstruction = self.roles["paraphraser"](target)
        loss = reconstruction_loss(reconstruction.float(), target)
        return self.optimize(loss, "paraphraser", "paraphraser", None, y)

    @classmethod
    def replays(cls, opts):
        return True

    def selectable(self, epoch: int) -> bool:
        return epoch == self.total_epochs() - 1

    @torch.no_grad()
    def evaluate_role(self, role, images, labels, normalize):
        if len(labels) == 0:
            return math.nan, math.nan
        model = self.roles[role]
        model.eval()
        total = 0.0
        for start in range(0, len(labels), 1000):
            target = self.teacher_map(normalize(images[start : start + 1000]))
            with self.ctx.autocast():
                _, reconstruction = model(target)
            total += float(reconstruction_loss(reconstruction.float(), target)) * len(target)
        model.train()
        return total / len(labels), math.nan

    def model_file(self, role):
        return "paraphraser.pt"

    def identity(self, role):
        return {
            "method": "ft-paraphraser",
            "variant": f"k={self.ctx.opts['k']}",
            "teacher": self.ctx.opts["t_name"],
            "student": "",
            "generation": None,
        }

    def settings(self):
        o = self.ctx.opts
        return {
            "k": o["k"],
            "ft_bn": "on" if self.bn else "off",
            "para_decoder_out": o["para_decoder_out"],
            **unless_default("ft", ft_init=o["ft_init"]),
        }

    def info(self):
        o = self.ctx.opts
        return {
            "k": o["k"],
            "teacher_channels": self.channels,
            "factor_channels": factor_channels(self.channels, o["k"]),
            "ft_bn": "on" if self.bn else "off",
            "para_decoder_out": o["para_decoder_out"],
            "ft_init": o["ft_init"],
            "kept": "the last epoch's",
            "lr_schedule": f"x0.1 at {o['milestones']}" if o.get("milestones") else "constant",
            "nesterov": False,
        }


def load_paraphraser(path, channels: int, k: float, bn: bool = True, decoder_out: str = "lrelu") -> Paraphraser:
    state = safe_load_state_dict(path, "paraphraser", "a paraphraser.pt of python -m kdpipe ft_paraphraser")
    model = Paraphraser(channels, k, bn, decoder_out)
    expected = model.state_dict()
    if set(state) != set(expected) or any(tuple(state[n].shape) != tuple(expected[n].shape) for n in expected):
        raise KdpipeError(
            f"paraphraser {path}: does not fit k={k} on a {channels}-channel teacher map "
            f"({factor_channels(channels, k)} factor channels) with ft_bn {'on' if bn else 'off'} and "
            f"para_decoder_out {decoder_out}; train it with the same --k, --ft_bn, --para_decoder_out and teacher"
        )
    model.load_state_dict(state)
    return model


class FactorTransferTask(StudentTask):
    method = "ft"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts = ctx.opts
        channels = self.teacher_shapes.stages[-1][0]
        para_bn, translator_bn = use_batchnorm(opts["ft_bn"], opts["data_name"])
        self.bn = bn_label(para_bn, translator_bn)
        paraphraser = load_paraphraser(opts["paraphraser"], channels, opts["k"], para_bn, opts["para_decoder_out"])
        self.paraphraser = frozen(ctx.prepare(paraphraser))
        s_channels = self.student_shapes.stages[-1][0]
        factor = factor_channels(channels, opts["k"])
        translator = ctx.prepare(Translator(s_channels, factor, translator_bn, opts["ft_init"]))
        self.extra_modules["translator"] = translator
        self.train_student_with(translator)
        self.lambda_kd = opts["lambda_kd"]
        self.factor_form = opts["factor_form"]

    def terms(self, x, y, index, view_ids, epoch):
        student, translator = self.roles["student"], self.extra_modules["translator"]
        with self.ctx.autocast():
            s_taps = student(x)
            with torch.no_grad():
                t_taps = self.teacher(x)
                factor_t = self.paraphraser.encode(t_taps.stages[-1])
            factor_s = translator(s_taps.stages[-1])
        ft = factor_transfer_loss(factor_s.float(), factor_t.float(), self.factor_form)
        terms = [self.ce(s_taps.logits, y), Term("ft", self.lambda_kd, ft)]
        return s_taps.logits, terms + self.soft_target_terms(s_taps.logits, t_taps.logits)

    def method_settings(self):
        o = self.ctx.opts
        return {
            "lambda_kd": self.lambda_kd,
            "k": o["k"],
            "ft_bn": self.bn,
            "para_decoder_out": o["para_decoder_out"],
            **unless_default("ft", factor_form=o["factor_form"], ft_init=o["ft_init"]),
        }

    def method_info(self):
        return {
            "lambda_kd": self.lambda_kd,
            "k": self.ctx.opts["k"],
            "ft_bn": self.bn,
            "para_decoder_out": self.ctx.opts["para_decoder_out"],
            "factor_form": self.factor_form,
            "ft_init": self.ctx.opts["ft_init"],
            "st_weight": self.st_weight,
            **({"T": self.T} if self.st_weight else {}),  # the soft-target term's temperature
            "translator_parameters": sum(p.numel() for p in self.extra_modules["translator"].parameters()),
        }


def train_ft_paraphraser(**kwargs) -> dict:
    """Train FT's paraphraser on a teacher; writes ``paraphraser.pt``.  Defaults (KD-Zoo's): 30 epochs, constant lr
    0.01, SGD momentum 0.9 without Nesterov."""
    return run_entry(
        "ft_paraphraser",
        kwargs,
        ParaphraserTask,
        default_note=lambda o: f"ft-paraphraser-{_slug(o['data_name'])}-{o['t_name']}-k{o['k']}-seed{o['seed']}",
        input_files=lambda o: {"t_model": o["t_model"]},
        settle=lambda o: settle_form(o, PARAPHRASER_REVISIONS, "the FT paraphraser"),
    )


def train_ft(**kwargs) -> dict:
    """Factor transfer into ``s_name``.  Without ``paraphraser=...`` one is trained first inside the run directory."""
    from ..options import resolve

    opts = resolve("ft", kwargs)
    check_st_temperature("ft")(opts)  # before an in-run paraphraser trains
    note = opts["note"] or f"ft-{_slug(opts['data_name'])}-{opts['t_name']}-{opts['s_name']}-seed{opts['seed']}"
    kwargs = {**kwargs, "note": note}
    if not opts["paraphraser"]:
        run_dir = Path(opts["save_root"]) / note
        # the student's data, device, log and seed options, what a stale run there gets, its batch and SGD settings
        names = common_options("rerun", "data", "device", "log", "seed") + ("batch_size", "momentum", "weight_decay")
        shared = {k: kwargs[k] for k in names if k in kwargs}
        train_ft_paraphraser(
            **shared,
            t_model=opts["t_model"],
            t_name=opts["t_name"],
            k=opts["k"],
            ft_bn=opts["ft_bn"],
            ft_init=opts["ft_init"],
            para_decoder_out=opts["para_decoder_out"],
            epochs=opts["para_epochs"],
            lr=opts["para_lr"] or opts["lr"] / 10,
            save_root=str(run_dir),
            note="paraphraser",
        )
        kwargs["paraphraser"] = str(run_dir / "paraphraser" / "paraphraser.pt")
    return run_entry(
        "ft",
        kwargs,
        FactorTransferTask,
        default_note=lambda o: note,
        input_files=lambda o: {"t_model": o["t_model"], "s_init": o.get("s_init"), "paraphraser": o["paraphraser"]},
    )
