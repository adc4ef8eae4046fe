"""``train_dml``: deep mutual learning (Zhang et al., CVPR 2018) of two or more peers.

No pre-trained teacher: every peer k minimises CE(z_k, y) + lambda_kd * mean_{j != k} KL(p_j || p_k)
with p = softmax(z) at T = 1 and the other peers' predictions treated as constants.  Each
peer has its own optimizer and schedule; all are reported (roles net1, net2, ...).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..engine import Context, StepResult, Task, make_optimizer, make_scheduler
from ..errors import KdpipeError
from ..models import build_model
from ..runner import run_entry
from .common import load_network


def mutual_kl(logits: list[torch.Tensor], k: int) -> torch.Tensor:
    """mean over j != k of KL(softmax(z_j) || softmax(z_k)), batch-averaged; the peers j are detached."""
    log_p_k = F.log_softmax(logits[k], dim=1)
    terms = [
        F.kl_div(log_p_k, F.softmax(logits[j].detach(), dim=1), reduction="batchmean")
        for j in range(len(logits))
        if j != k
    ]
    return torch.stack(terms).mean()


def check_cohort(opts: dict) -> None:
    """One way of naming the cohort: ``peers`` (and ``peer_inits``) or the seed library's ``net1_*``/``net2_*``
    flags, never both (one would be ignored), and no more initial weights than peers."""
    for many, pair in (("peers", ("net1_name", "net2_name")), ("peer_inits", ("net1_init", "net2_init"))):
        given = [name for name in pair if opts.get(name)]
        if opts.get(many) and given:
            raise KdpipeError(
                f"{many}: given together with {given[0]} ({opts[given[0]]}); use one or the other: "
                f"--{many} for the whole cohort, or --{pair[0]} and --{pair[1]}"
            )
    names = peer_names(opts)
    if opts.get("peer_inits") and len(opts["peer_inits"]) > len(names):
        raise KdpipeError(
            f"peer_inits: got {len(opts['peer_inits'])} files for {len(names)} peers ({', '.join(names)}); "
            "at most one per peer, in the peers' order"
        )


def peer_names(opts: dict) -> list[str]:
    if opts.get("peers"):
        return list(opts["peers"])
    if not opts.get("net1_name") or not opts.get("net2_name"):
        raise KdpipeError("net1_name/net2_name: both are required (or give --peers NAME,NAME[,...])")
    return [opts["net1_name"], opts["net2_name"]]


def peer_inits(opts: dict, count: int) -> list[str | None]:
    inits = list(opts.get("peer_inits") or [opts.get("net1_init"), opts.get("net2_init")])
    return (inits + [None] * count)[:count]


class MutualTask(Task):
    method = "dml"

    def __init__(self, ctx: Context):
        super().__init__(ctx)
        opts = ctx.opts
        self.names = peer_names(opts)
        self.lambda_kd = float(opts["lambda_kd"])
        for i, (name, init) in enumerate(zip(self.names, peer_inits(opts, len(self.names))), start=1):
            role = f"net{i}"
            if init:
                model = load_network(init, name, ctx.data.num_classes, f"{role}_init")
            else:
                model = build_model(name, ctx.data.num_classes)
            self.roles[role] = ctx.prepare(model)
            self.optimizers[role] = make_optimizer(self.roles[role].parameters(), opts)
            self.schedulers[role] = make_scheduler(self.optimizers[role], opts)

    def train_step(self, x, y, index, view_ids, epoch):
        with self.ctx.autocast():
            logits = [model(x).logits.float() for model in self.roles.values()]
        losses = [F.cross_entropy(z, y) + self.lambda_kd * mutual_kl(logits, k) for k, z in enumerate(logits)]
        for opt in self.optimizers.values():
            opt.zero_grad(set_to_none=True)
        # the peers' graphs are disjoint (others enter detached), so one backward gives each its own gradient
        torch.stack(losses).sum().backward()
        for opt in self.optimizers.values():
            opt.step()
        return {role: StepResult(loss, (z.argmax(1) == y).sum()) for role, loss, z in zip(self.roles, losses, logits)}

    @classmethod
    def replays(cls, opts):
        return True  # every peer's loss, one backward and every peer's SGD update: the same kernels each step

    def identity(self, role):
        return {
            "method": "dml",
            "variant": "",
            "teacher": self.names[0],
            "student": "+".join(self.names[1:]),
            "generation": None,
        }

    def settings(self) -> dict:
        return {"lambda_kd": self.lambda_kd}

    def info(self) -> dict:
        return {"peers": dict(zip(self.roles, self.names)), "lambda_kd": self.lambda_kd}


def train_dml(**kwargs) -> dict:
    """Train a cohort of peers by deep mutual learning; returns the run record.

    ``net1_name``/``net2_name`` (the seed library's flags) or ``peers=[...]`` for larger cohorts.
    """

    def note(o):
        return f"dml-{o['data_name'].replace(':', '_').replace('/', '_')}-{'-'.join(peer_names(o))}-seed{o['seed']}"

    def inputs(o):
        return {f"net{i}_init": p for i, p in enumerate(peer_inits(o, len(peer_names(o))), start=1) if p}

    return run_entry("dml", kwargs, MutualTask, default_note=note, input_files=inputs, settle=check_cohort)
