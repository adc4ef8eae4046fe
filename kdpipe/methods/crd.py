"""``train_crd``: contrastive representation distillation (Tian, Krishnan & Isola, ICLR 2020).

total = CE + lambda_kd * L_crd (+ st_weight * L_st).  L_crd contrasts the student's pooled
embedding with the teacher's through two learned embedding heads and two momentum memory
banks over the training set: ``nce_n`` negatives per sample, by default drawn from the other
classes without replacement, the positive the image itself (``mode exact``) or an image of
its class (``mode relax``), and the NCE objective -- RepDistiller's defaults; ``sampler
uniform`` and ``objective infonce`` select the alternatives.  The heads and the banks are
saved with the student, so a resumed run continues with exactly the same memory; the
sampler draws from the device's global RNG, whose state every checkpoint saves.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import Context, Task, make_optimizer, make_scheduler
from ..losses import TapShapes
from ..losses.st import soft_target_loss
from ..objectives.crd import CRDLoss
from ..runner import run_entry
from .common import cache_input, cached_taps, frozen, load_network, open_cache, teacher_test_accuracy
from .kd import build_student


def default_lambda(num_classes: int) -> float:
    """SPEC: 0.2 on CIFAR-10, 0.8 on CIFAR-100 (taken as: 100 classes or more)."""
    return 0.8 if num_classes >= 100 else 0.2


class ContrastiveTask(Task):
    method = "crd"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        student = build_student(ctx)
        self.teacher = frozen(ctx.prepare(load_network(opts["t_model"], opts["t_name"], data.num_classes, "t_model")))
        self.teacher_acc = teacher_test_accuracy(self.teacher, ctx)
        s_dim = TapShapes.probe(student, data.image_shape).embedding
        t_dim = TapShapes.probe(self.teacher, data.image_shape).embedding
        self.crd = CRDLoss(
            s_dim,
            t_dim,
            n_data=len(data.train_y),
            feat_dim=opts["feat_dim"],
            nce_n=opts["nce_n"],
            nce_t=opts["nce_t"],
            nce_mom=opts["nce_mom"],
            mode=opts["mode"],
            sampler=opts["sampler"],
            objective=opts["objective"],
            labels=data.train_y,
        ).to(ctx.device)
        self.lambda_kd = opts["lambda_kd"] if opts["lambda_kd"] is not None else default_lambda(data.num_classes)
        self.st_weight, self.T = opts["st_weight"], opts["T"]
        self.cache = open_cache(ctx, need_embedding=True)
        self.roles["student"] = student
        self.extra_modules["crd"] = self.crd
        params = list(student.parameters()) + list(self.crd.parameters())
        self.optimizers["student"] = make_optimizer(params, opts)
        self.schedulers["student"] = make_scheduler(self.optimizers["student"], opts)

    def train_step(self, x, y, index, view_ids, epoch):
        student = self.roles["student"]
        with self.ctx.autocast():
            s_taps = student(x)
            if self.cache is not None:
                t_taps = cached_taps(self.cache, index, view_ids)
            else:
                with torch.no_grad():
                    t_taps = self.teacher(x)
        total = F.cross_entropy(s_taps.logits.float(), y)
        index = index.to(self.ctx.device, non_blocking=True)
        total = total + self.lambda_kd * self.crd(s_taps.embedding.float(), t_taps.embedding.float(), index)
        if self.st_weight > 0:
            total = total + self.st_weight * soft_target_loss(s_taps.logits.float(), t_taps.logits.float(), self.T)
        return self.optimize(total, "student", "student", s_taps.logits, y)

    def identity(self, role):
        return {
            "method": "crd",
            "variant": "+st" if self.st_weight > 0 else "",
            "teacher": self.ctx.opts["t_name"],
            "student": self.ctx.opts["s_name"],
            "generation": None,
        }

    def info(self):
        o = self.ctx.opts
        return {
            "teacher": {"name": o["t_name"], "test_acc": self.teacher_acc},
            "lambda_kd": self.lambda_kd,
            "st_weight": self.st_weight,
            **({"T": o["T"]} if self.st_weight else {}),  # the soft-target term's temperature
            "feat_dim": o["feat_dim"],
            "nce_n": o["nce_n"],
            "nce_t": o["nce_t"],
            "nce_mom": o["nce_mom"],
            "mode": o["mode"],
            "sampler": o["sampler"],
            "objective": o["objective"],
            "memory_rows": len(self.ctx.data.train_y),
            "teacher_source": "cache" if self.cache is not None else "live",
        }


def train_crd(**kwargs) -> dict:
    """Contrastive representation distillation of ``t_model`` into ``s_name``; returns the run record."""
    return run_entry(
        "crd",
        kwargs,
        ContrastiveTask,
        default_note=lambda o: (
            f"crd-{o['data_name'].replace(':', '_').replace('/', '_')}-{o['t_name']}-{o['s_name']}-seed{o['seed']}"
        ),
        input_files=lambda o: {"t_model": o["t_model"], "s_init": o.get("s_init"), **cache_input(o)},
    )
