"""``train_bss``: distillation with boundary supporting samples (Heo et al., AAAI 2019), and
born-again generations.

Each step, up to ``attack_size`` samples that teacher and student both classify correctly
are pushed by an iterative attack on the teacher toward another class (drawn from the
teacher's softmax by default, as KD-Zoo does; ``attack_class runner_up``: its runner-up)
until they reach the teacher's decision boundary, clamped to +-2.5 in normalised input space
(``attack_clamp image``: to the image range); the student then matches the teacher's
softened outputs on them:

    total = CE(x) + lambda_e * KL_T(teacher(x_adv) || student(x_adv))

with lambda_e = 0 during a warm-up (10 of 200 epochs, scaled) and then
max(lambda_kd * (1 - 1.25 (e - 1) / E), 0).  With ``attack_size`` 0 the same term is taken on
the clean batch: plain born-again soft targets.  Generation g's student starts from a
fresh initialisation seeded by (seed, g); generation 1's equals the baseline's.
"""

from __future__ import annotations

import torch

from ..data import derived_seed
from ..engine import Context
from ..objectives.bss import (
    attack_bounds,
    attack_classes,
    boundary_attack,
    bss_kd_loss,
    bss_lambda,
    select_attack_samples,
)
from ..runner import run_entry
from .student import StudentTask, Term

ATTACK_STEPS = 10
ATTACK_STEP_SIZE = 0.3
ATTACK_EPS = 1e-4


class BoundarySampleTask(StudentTask):
    method = "bss"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        self.train_student_with()
        lower, upper = attack_bounds(opts["attack_clamp"], data.mean, data.std)
        self.lower, self.upper = lower.to(ctx.device), upper.to(ctx.device)

    def build_student(self):
        """Generation g > 1 starts from a fresh initialisation seeded by (seed, g)."""
        opts = self.ctx.opts
        if not opts.get("s_init") and opts["generation"] > 1:
            torch.manual_seed(derived_seed("init", opts["seed"], "generation", opts["generation"]))
        return super().build_student()

    def terms(self, x, y, index, view_ids, epoch):
        opts, student = self.ctx.opts, self.roles["student"]
        weight = bss_lambda(epoch + 1, opts["epochs"], opts["lambda_kd"])
        with self.ctx.autocast():
            s_logits = student(x).logits.float()
        terms = [self.ce(s_logits, y)]
        if weight <= 0:
            return s_logits, terms
        with torch.no_grad(), self.ctx.autocast():
            t_logits = self.teacher(x).logits.float()
        if opts["attack_size"] == 0:
            return s_logits, terms + [Term("bss", weight, bss_kd_loss(s_logits, t_logits, opts["T"]))]
        idx, valid = select_attack_samples(s_logits.detach(), t_logits, y, opts["attack_size"])
        # the candidates come first; attack and distil on them only, as the reference does (the
        # student's batch norm then sees the same adversarial batch); one host sync per batch
        idx = idx[: int(valid.sum())]
        kd = torch.zeros((), device=s_logits.device)
        if idx.numel():
            target = attack_classes(t_logits[idx], opts["attack_class"])
            x_adv = boundary_attack(
                self.teacher,
                x[idx].float(),
                y[idx],
                target,
                steps=ATTACK_STEPS,
                step_size=ATTACK_STEP_SIZE,
                eps=ATTACK_EPS,
                lower=self.lower,
                upper=self.upper,
            )
            with self.ctx.autocast():
                s_adv = student(x_adv).logits.float()
                with torch.no_grad():
                    t_adv = self.teacher(x_adv).logits.float()
            kd = bss_kd_loss(s_adv, t_adv, opts["T"])
        return s_logits, terms + [Term("bss", weight, kd)]

    def variant(self) -> str:
        return "" if self.ctx.opts["attack_size"] else "born-again"

    def generation(self) -> int:
        return self.ctx.opts["generation"]

    def method_settings(self):
        o = self.ctx.opts
        return {k: o[k] for k in ("lambda_kd", "T", "attack_size", "attack_class", "attack_clamp")}

    def method_info(self):
        o = self.ctx.opts
        return {
            "lambda_kd": o["lambda_kd"],
            "T": o["T"],
            "attack_size": o["attack_size"],
            "attack_class": o["attack_class"],
            "attack_clamp": o["attack_clamp"],
            "attack_steps": ATTACK_STEPS,
            "attack_step_size": ATTACK_STEP_SIZE,
            "generation": o["generation"],
        }


def train_bss(**kwargs) -> dict:
    """BSS distillation (one born-again generation when teacher and student share the architecture)."""
    return run_entry(
        "bss",
        kwargs,
        BoundarySampleTask,
        default_note=lambda o: (
            f"bss-{o['data_name'].replace(':', '_').replace('/', '_')}-{o['t_name']}-{o['s_name']}"
            f"-gen{o['generation']}-seed{o['seed']}"
        ),
        input_files=lambda o: {"t_model": o["t_model"], "s_init": o.get("s_init")},
    )
