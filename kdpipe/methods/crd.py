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


from ..engine import Context
from ..objectives.crd import CRDLoss
from ..runner import run_entry
from .common import cache_input, check_st_temperature
from .student import StudentTask, Term


def default_lambda(num_classes: int) -> float:
    """SPEC: 0.2 on CIFAR-10, 0.8 on CIFAR-100 (taken as: 100 classes or more)."""
    return 0.8 if num_classes >= 100 else 0.2


class ContrastiveTask(StudentTask):
    method = "crd"

    @classmethod
    def cache_taps_of(cls, opts: dict) -> frozenset:
        return frozenset(CRDLoss.teacher_taps | ({"logits"} if (opts.get("st_weight") or 0) > 0 else set()))

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts, data = ctx.opts, ctx.data
        self.crd = CRDLoss(
            self.student_shapes.embedding,
            self.teacher_shapes.embedding,
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
        self.cache_taps = self.cache_taps_of(opts)
        self.open_teacher_cache()
        self.extra_modules["crd"] = self.crd
        self.train_student_with(self.crd)

    def terms(self, x, y, index, view_ids, epoch):
        with self.ctx.autocast():
            s_taps = self.roles["student"](x)
            t_taps = self.teacher_taps(x, index, view_ids)
        index = index.to(self.ctx.device, non_blocking=True)
        crd = self.crd(s_taps.embedding.float(), t_taps.embedding.float(), index)
        terms = [self.ce(s_taps.logits, y), Term("crd", self.lambda_kd, crd)]
        return s_taps.logits, terms + self.soft_target_terms(s_taps.logits, t_taps.logits)

    def method_settings(self):
        o = self.ctx.opts
        keys = ("mode", "sampler", "objective", "nce_n", "feat_dim")
        return {"lambda_kd": self.lambda_kd, **{k: o[k] for k in keys}}

    def method_info(self):
        o = self.ctx.opts
        return {
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
            **self.teacher_source(),
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
        input_files=lambda o: {
            "t_model": o["t_model"],
            "s_init": o.get("s_init"),
            **cache_input(o, ContrastiveTask.cache_taps_of(o)),
        },
        settle=check_st_temperature("crd"),
    )
