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

On CUDA with ``cuda_graphs`` on, the step has a fixed size so that it can be replayed as a CUDA
graph (:mod:`kdpipe.capture`; the key is the epoch's lambda_e): all ``min(attack_size, B)``
selected samples are attacked with a valid mask (the candidates first, padding that never
moves), and the student runs on the whole padded adversarial batch under
:func:`~kdpipe.objectives.bss.subset_batch_norm`, whose batch norm layers use and update the
statistics of the valid rows alone -- the same loss, gradients and running statistics as the
eager step's forward on the valid samples only, without its host sync (with ``attack_class
sampled`` the targets are drawn for all selected samples: the same distribution as the eager
step's, not the same draws).  On the CPU, with ``--cuda_graphs 0`` and with DOT (never
captured), the step attacks and distils on the valid samples only, as the reference.
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
    subset_batch_norm,
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
        # the fixed-size step where it can be captured (DOT steps never are, and there a step without a
        # boundary sample must keep its distillation gradient absent, not zero)
        self.fixed_size = bool(ctx.cuda_graphs) and not self.uses_dot()

    def build_student(self):
        """Generation g > 1 starts from a fresh initialisation seeded by (seed, g)."""
        opts = self.ctx.opts
        if not opts.get("s_init") and opts["generation"] > 1:
            torch.manual_seed(derived_seed("init", opts["seed"], "generation", opts["generation"]))
        return super().build_student()

    def capture_key(self, epoch):
        if self.ctx.opts["attack_size"] > 0 and not self.fixed_size:  # the variable-size step syncs the host
            return None
        return super().capture_key(epoch)

    def step_values(self, epoch):
        """The epoch's BSS weight: baked into the graph, and whether it is > 0 decides whether the teacher runs."""
        opts = self.ctx.opts
        return (bss_lambda(epoch + 1, opts["epochs"], opts["lambda_kd"]),)

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
        if self.fixed_size:
            kd = self.boundary_kd_fixed(x, y, t_logits, idx, valid)
        else:
            kd = self.boundary_kd(x, y, t_logits, idx, valid)
        return s_logits, terms + [Term("bss", weight, kd)]

    def attack(self, x, y, t_logits, idx, valid=None):
        """The boundary supporting samples of the rows ``idx`` of the batch (``valid``: which of them to move)."""
        target = attack_classes(t_logits[idx], self.ctx.opts["attack_class"])
        return boundary_attack(
            self.teacher,
            x[idx].float(),
            y[idx],
            target,
            steps=ATTACK_STEPS,
            step_size=ATTACK_STEP_SIZE,
            eps=ATTACK_EPS,
            lower=self.lower,
            upper=self.upper,
            valid=valid,
        )

    def boundary_kd(self, x, y, t_logits, idx, valid):
        """The BSS term on the valid candidates only, as the reference computes it: the student's batch norm sees
        just the adversarial samples; one host sync per batch (their number), no student forward when there are
        none (the term is then a constant 0)."""
        # the candidates come first; attack and distil on them only
        idx = idx[: int(valid.sum())]
        if not idx.numel():
            return torch.zeros((), device=t_logits.device)
        x_adv = self.attack(x, y, t_logits, idx)
        with self.ctx.autocast():
            s_adv = self.roles["student"](x_adv).logits.float()
            with torch.no_grad():
                t_adv = self.teacher(x_adv).logits.float()
        return bss_kd_loss(s_adv, t_adv, self.ctx.opts["T"])

    def boundary_kd_fixed(self, x, y, t_logits, idx, valid):
        """The BSS term of :meth:`boundary_kd` from a batch of fixed size A = ``min(attack_size, B)``, with no host
        sync (what a CUDA graph replays): all A selected rows are attacked, the padding (``valid`` False) never
        moves; the student runs on all A under :func:`subset_batch_norm`, so its batch norm normalises with and
        updates the statistics of the valid rows alone; the loss averages over the valid rows (0, with zero
        gradients, when there is none).  Target classes are drawn for all A rows: with ``attack_class sampled``
        the valid rows' targets follow the eager step's distribution but are not the same draws."""
        x_adv = self.attack(x, y, t_logits, idx, valid)
        with self.ctx.autocast():
            with subset_batch_norm(self.roles["student"], valid):
                s_adv = self.roles["student"](x_adv).logits.float()
            with torch.no_grad():
                t_adv = self.teacher(x_adv).logits.float()
        return bss_kd_loss(s_adv, t_adv, self.ctx.opts["T"], valid)

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
