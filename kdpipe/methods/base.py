"""``train_base``: plain supervised training of one network (teachers and baseline students)."""

from __future__ import annotations

import torch.nn.functional as F

from ..engine import Context, Task, make_optimizer, make_scheduler
from ..models import build_model
from ..runner import run_entry


class SupervisedTask(Task):
    method = "baseline"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        self.net_name = ctx.opts["net_name"]
        model = ctx.prepare(build_model(self.net_name, ctx.data.num_classes))
        self.roles["net"] = model
        self.optimizers["net"] = make_optimizer(model.parameters(), ctx.opts)
        self.schedulers["net"] = make_scheduler(self.optimizers["net"], ctx.opts)

    def train_step(self, x, y, index, view_ids, epoch):
        model = self.roles["net"]
        with self.ctx.autocast():
            logits = model(x).logits
            loss = F.cross_entropy(logits.float(), y)
        return self.optimize(loss, "net", "net", logits, y)

    @classmethod
    def replays(cls, opts):
        return True

    def identity(self, role):
        return {"method": "baseline", "variant": "", "teacher": "", "student": self.net_name, "generation": None}


def train_base(**kwargs) -> dict:
    """Train one network with cross-entropy; returns the run record (``run.json``).

    Keyword arguments are the command-line flags of ``python -m kdpipe base``.
    """
    return run_entry(
        "base",
        kwargs,
        SupervisedTask,
        default_note=lambda o: (
            f"base-{o['data_name'].replace(':', '_').replace('/', '_')}-{o['net_name']}-seed{o['seed']}"
        ),
    )
