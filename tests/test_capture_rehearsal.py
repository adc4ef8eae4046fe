"""Every method that claims a CUDA-graph step (``Task.replays``) rehearsed on the CPU (kdpipe.capture.ReplayRehearsal).

A graph replays the kernels of one recorded step: a step that reads a Python value that changes, memory
made anew between steps, or the host's copy of a device value computes something else on replay, silently,
or fails to capture.  The rehearsal records each step op by op under the keys the GPU runner would use and
requires later steps to run the very same ops on the same held memory.  Here every replaying method and
setting passes it for two epochs, and each kind of fault it exists to catch is caught."""

import re

import pytest
import torch
import torch.nn.functional as F

from kdpipe.capture import ReplayRehearsal
from kdpipe.data import load_data
from kdpipe.engine import Context, Task, Training, fit, make_optimizer, seed_everything
from kdpipe.losses import LOSSES, TapShapes
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.bss import BoundarySampleTask
from kdpipe.methods.crd import ContrastiveTask
from kdpipe.methods.dml import MutualTask
from kdpipe.methods.ft import FactorTransferTask, ParaphraserTask
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.objectives.ft import Paraphraser
from kdpipe.options import resolve

DIGITS = dict(data_name="digits", batch_size=64, epochs=2, train_subset=200)
PAIR = dict(t_name="resnet14", s_name="resnet8")


@pytest.fixture(scope="module")
def data():
    return load_data("digits", train_subset=200)


@pytest.fixture(scope="module")
def files(tmp_path_factory, data):
    root = tmp_path_factory.mktemp("nets")
    torch.manual_seed(0)
    teacher = build_model("resnet14", 10)
    torch.save(teacher.state_dict(), root / "teacher.pt")
    channels = TapShapes.probe(teacher, data.image_shape).stages[-1][0]
    torch.save(Paraphraser(channels, 0.5, True, "lrelu").state_dict(), root / "paraphraser.pt")
    return {"t_model": str(root / "teacher.pt"), "paraphraser": str(root / "paraphraser.pt")}


def make_task(cls, entry, data, run_dir, **opts):
    seed_everything(0)
    return cls(Context(resolve(entry, {**DIGITS, **opts}), data, torch.device("cpu"), run_dir))


def rehearse(task) -> ReplayRehearsal:
    """Train ``task`` as :func:`kdpipe.engine.fit` does, its steps run by a rehearsal."""
    run = Training(task, task.ctx, {})
    run.step_runner = rehearsal = ReplayRehearsal(task, run.step_runner.batch, run.step_runner.full_batch)
    while not run.done:
        run.begin_epoch()
        for step in range(run.steps):
            run.step(step)
        run.end_epoch()
    return rehearsal


KD_MODES = [m for m, cls in LOSSES.items() if cls.capturable]
CASES = {
    "base": (SupervisedTask, "base", dict(net_name="resnet8")),
    "dml": (MutualTask, "dml", dict(peers=["resnet8", "resnet8"])),
    "ft_paraphraser": (ParaphraserTask, "ft_paraphraser", dict(t_name="resnet14")),
    "ft": (FactorTransferTask, "ft", dict(PAIR, st_weight=0.5)),
    "crd": (ContrastiveTask, "crd", dict(PAIR, nce_n=64)),  # negatives drawn without replacement
    "crd uniform relax infonce": (
        ContrastiveTask,
        "crd",
        dict(PAIR, nce_n=500, sampler="uniform", mode="relax", objective="infonce", st_weight=1.0),
    ),
    # the fixed-size step (kdpipe.methods.bss) that CUDA graphs run; 3 epochs: a key per epoch (its weight)
    "bss": (BoundarySampleTask, "bss", dict(PAIR, epochs=3)),
    "bss runner-up targets, image clamp": (  # the default draws its targets (sampled), clamps normalized
        BoundarySampleTask,
        "bss",
        dict(PAIR, epochs=3, attack_class="runner_up", attack_clamp="image"),
    ),
    "bss born-again": (BoundarySampleTask, "bss", dict(PAIR, epochs=3, attack_size=0)),
    **{f"kd {mode}": (DistillTask, "kd", dict(PAIR, kd_mode=mode)) for mode in KD_MODES},
    # a fresh optimizer for the CE phase: its momentum buffers are made by an eager step, never recorded
    "kd fsp, separate CE-phase optimizer": (DistillTask, "kd", dict(PAIR, kd_mode="fsp", init_optimizer="separate")),
    "kd ab, features init (repdistiller.yaml)": (
        DistillTask,
        "kd",
        dict(PAIR, kd_mode="ab", init_optimizer="features"),
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_every_replaying_step_rehearses_cleanly(case, data, files, tmp_path):
    cls, entry, opts = CASES[case]
    inputs = {"paraphraser": files["paraphraser"]} if entry == "ft" else {}
    if entry != "base" and entry != "dml":
        inputs["t_model"] = files["t_model"]
    task = make_task(cls, entry, data, tmp_path, **opts, **inputs)
    assert cls.replays(task.ctx.opts)
    if entry == "bss" and task.ctx.opts["attack_size"]:
        assert task.capture_key(0) is None  # the CPU's variable-size step: not replayable
        task.fixed_size = True  # the step CUDA graphs run
    rehearsal = rehearse(task)
    assert rehearsal.findings == []
    assert rehearsal.captures >= 1 and rehearsal.compared >= 2  # the comparison ran, across both epochs


def test_a_rehearsed_run_is_the_eager_run(data, files, tmp_path):
    """The rehearsal changes nothing: the same metrics and weights as the CPU's ordinary fit."""
    kd = dict(PAIR, kd_mode="st", t_model=files["t_model"])
    plain = make_task(DistillTask, "kd", data, tmp_path / "plain", **kd)
    (tmp_path / "plain").mkdir()
    history = fit(plain, plain.ctx, {}).history
    (tmp_path / "rehearsed").mkdir()
    rehearsed = make_task(DistillTask, "kd", data, tmp_path / "rehearsed", **kd)
    rehearse(rehearsed)
    assert (tmp_path / "plain" / "metrics.csv").read_text().split("\n")[1].split(",")[:9] == (
        (tmp_path / "rehearsed" / "metrics.csv").read_text().split("\n")[1].split(",")[:9]
    )
    assert len(history) == 2
    for a, b in zip(plain.roles["student"].state_dict().values(), rehearsed.roles["student"].state_dict().values()):
        assert torch.equal(a, b)


# ---------------------------------------------------------------- what it catches


class Faulty(Task):
    """A plain classifier whose step has one fault a graph replay would get wrong."""

    method = "faulty"

    def __init__(self, ctx, fault):
        super().__init__(ctx)
        self.fault, self.calls = fault, 0
        self.roles["net"] = model = build_model("resnet8", 10)
        self.optimizers["net"] = make_optimizer(model.parameters(), ctx.opts)
        self.scale = torch.ones(())

    @classmethod
    def replays(cls, opts):
        return True

    def train_step(self, x, y, index, view_ids, epoch):
        logits = self.roles["net"](x).logits
        loss = F.cross_entropy(logits, y)
        if self.fault == "python value":  # a number that changes every step, baked into the graph once
            self.calls += 1
            loss = loss * (1.0 + 0.01 * self.calls)
        elif self.fault == "python counter":  # bookkeeping a replay would not do
            self.calls += 1
        elif self.fault == "new tensor":  # memory made anew outside the step: a replay reads the old one
            loss = loss * self.scale
            self.scale = self.scale * 1.0
        elif self.fault == "host sync":
            if float(loss.detach()) > 1e9:
                loss = loss * 0
        elif self.fault == "boolean mask":
            loss = F.cross_entropy(logits[y > 4], y[y > 4])
        elif self.fault == "python data":
            loss = loss * torch.tensor(1.0)
        return self.optimize(loss, "net", "net", logits, y)


@pytest.mark.parametrize(
    "fault, finding",
    [
        ("python value", r"op \d+ \(aten.mul.Tensor at test_capture_rehearsal.py:\d+\) differs in a later step"),
        ("python counter", r"the step changes task.calls \(a replayed graph would not\)"),
        ("new tensor", r"reads other memory held outside the step"),
        ("host sync", r"aten::_local_scalar_dense synchronises with the host .*test_capture_rehearsal.py"),
        ("boolean mask", r"aten::index with a boolean mask"),
        ("python data", r"aten::lift_fresh: a tensor made from Python data inside the step"),
    ],
)
def test_the_rehearsal_finds_what_a_replay_would_get_wrong(fault, finding, data, tmp_path):
    seed_everything(0)
    ctx = Context(resolve("base", {**DIGITS, "net_name": "resnet8", "epochs": 1}), data, torch.device("cpu"), tmp_path)
    rehearsal = rehearse(Faulty(ctx, fault))
    assert rehearsal.findings, fault
    assert any(re.search(finding, f) for f in rehearsal.findings), rehearsal.findings[:2]


def test_every_training_task_declares_whether_it_replays(data, files, tmp_path):
    """The cost plan reads Task.replays without building tasks: the options decide it."""
    kd = {**PAIR, "t_model": files["t_model"]}
    assert DistillTask.replays(resolve("kd", {**DIGITS, **kd, "kd_mode": "st"}))
    assert not DistillTask.replays(resolve("kd", {**DIGITS, **kd, "kd_mode": "kdsvd"}))  # svd syncs the host
    assert not DistillTask.replays(resolve("kd", {**DIGITS, **kd, "kd_mode": "st", "dot_delta": 0.075}))
    assert not ContrastiveTask.replays(resolve("crd", {**DIGITS, **kd, "dot_delta": 0.075}))
    assert not Task.replays({})
    task = make_task(DistillTask, "kd", data, tmp_path, **kd, kd_mode="kdsvd")
    assert task.capture_key(0) is None
