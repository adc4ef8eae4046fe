"""The training engine shared by every entry point.

A :class:`Task` says what is trained (models, losses, optimizers) and how one batch is
processed; :func:`fit` owns everything else: the epoch plan (order and augmentation
views from (seed, epoch)), evaluation on val and test, best-on-val tracking, per-epoch
metrics, atomic checkpoints with every RNG state, and exact resumption.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import io
import logging
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .capture import StepRunner
from .checkpoint import CHECKPOINT, atomic_save, atomic_write_text, load_run_checkpoint
from .data import ImageData, Normalizer, derived_seed, epoch_plan
from .errors import KdpipeError
from .hostmem import keep_freed_memory
from .options import differing_keys, fingerprint_value

log = logging.getLogger("kdpipe")

METRIC_COLUMNS = [
    "epoch",
    "role",
    "lr",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "epoch_time_s",
    "images_per_s",
]


class NonFiniteLoss(KdpipeError):
    pass


@dataclass
class Context:
    """Everything a task needs to build itself: options, data, device."""

    opts: dict
    data: ImageData
    device: torch.device
    run_dir: Path
    amp: bool | None = None  # bf16 autocast; default: on CUDA unless --amp off
    cuda_graphs: bool | None = None  # replay the training step as a CUDA graph (kdpipe.capture); default: on CUDA
    # models and input batches in channels_last (NHWC), else contiguous (NCHW): from --memory_format, see prepare
    channels_last: bool = field(init=False)

    def __post_init__(self):
        cuda = self.device.type == "cuda"
        self.amp = cuda and self.opts.get("amp") != "off" if self.amp is None else self.amp
        if self.cuda_graphs is None:
            self.cuda_graphs = cuda and self.opts.get("cuda_graphs") != 0
        layout = self.opts.get("memory_format") or "auto"
        self.channels_last = layout == "channels_last" or (layout == "auto" and cuda)
        if not cuda:  # a CPU step frees and allocates the same buffers each time: keep them (kdpipe.hostmem)
            keep_freed_memory()

    def autocast(self):
        if self.amp:
            # no cast cache: a cached cast made while a CUDA graph is recorded would outlive it (the same casts run)
            return torch.autocast(device_type="cuda", dtype=torch.bfloat16, cache_enabled=False)
        return contextlib.nullcontext()

    def prepare(self, model: nn.Module) -> nn.Module:
        """``model`` on the device in the context's memory format (``--memory_format``: ``auto`` is channels_last
        on CUDA and NCHW on the CPU).  channels_last on the CPU refuses a model that torch's CPU channels_last
        path corrupts (:func:`breaks_cpu_channels_last`)."""
        if self.channels_last and self.device.type == "cpu" and breaks_cpu_channels_last(model):
            raise KdpipeError(
                f"memory_format: got 'channels_last', but {type(model).__name__} has a strided 1x1 convolution "
                "with 2-7 input channels, whose weight gradient torch's CPU channels_last path corrupts; "
                "allowed for it on the CPU: auto, contiguous"
            )
        model = model.to(self.device)
        if self.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model


def breaks_cpu_channels_last(model: nn.Module) -> bool:
    """Whether ``model`` has a convolution whose weight gradient torch's CPU channels_last path gets wrong:
    a 1x1 convolution with stride > 1 and 2-7 input channels per group corrupts the heap (torch 2.14.1,
    oneDNN 3.12; the 4 -> 8 channel shortcut of resnet8w4, resnet14w4 and resnet20w4)."""
    return any(
        isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1) and max(m.stride) > 1 and 1 < m.in_channels // m.groups < 8
        for m in model.modules()
    )


def make_optimizer(params, opts: dict) -> torch.optim.Optimizer:
    """SGD (Nesterov when momentum > 0, as KD-Zoo, unless ``nesterov`` says otherwise); DOT
    (:mod:`kdpipe.dot`) when the options set ``dot_delta``."""
    if opts.get("dot_delta") is not None:
        from .dot import make_dot

        return make_dot(params, opts)
    nesterov = opts.get("nesterov")
    if nesterov is None:
        nesterov = opts["momentum"] > 0
    elif nesterov and opts["momentum"] == 0:
        raise KdpipeError("nesterov: true needs --momentum > 0")
    return torch.optim.SGD(
        params, lr=opts["lr"], momentum=opts["momentum"], nesterov=nesterov, weight_decay=opts["weight_decay"]
    )


def default_milestones(epochs: int) -> list[int]:
    """SPEC's 200-epoch schedule (x0.1 at 100 and 150) scaled to ``epochs``."""
    return sorted({max(1, round(epochs * 0.5)), max(1, round(epochs * 0.75))})


def lr_factor(epoch: int, milestones: list[int], warmup_epochs: int = 0) -> float:
    """Multiplier of the base lr in ``epoch`` (0-based): x0.1 per milestone passed, x0.1 while warming up."""
    factor = 0.1 ** sum(epoch >= m for m in milestones)
    return factor * (0.1 if epoch < warmup_epochs else 1.0)


def make_scheduler(optimizer, opts: dict, epochs: int | None = None):
    """Step lr schedule (He et al.'s ResNet recipe): optional warm-up at lr/10, then x0.1 at milestones."""
    epochs = epochs or opts["epochs"]
    milestones = opts.get("milestones") or default_milestones(epochs)
    warmup = opts.get("warmup_epochs") or 0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda e: lr_factor(e, milestones, warmup))


@dataclass
class StepResult:
    """Per-role results of one training batch, kept on the device (no host sync)."""

    loss: Tensor  # mean loss over the batch
    correct: Tensor  # number of correct top-1 predictions


class Task:
    """Base class of what an entry point trains.  Subclasses fill ``roles`` and ``train_step``."""

    method = "baseline"

    def __init__(self, ctx: Context):
        self.ctx = ctx
        self.roles: dict[str, nn.Module] = {}  # evaluated and reported models
        self.extra_modules: dict[str, nn.Module] = {}  # trained helpers saved with the run
        self.optimizers: dict[str, torch.optim.Optimizer] = {}
        self.schedulers: dict[str, Any] = {}

    # -- hooks
    def optimize(self, loss: Tensor, optimizer: str, role: str, logits: Tensor | None, y: Tensor) -> dict:
        """One update of ``optimizer`` on ``loss``; the role's step result (accuracy from ``logits``)."""
        opt = self.optimizers[optimizer]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if logits is None:  # not a classifier
            correct = torch.zeros((), dtype=torch.long, device=loss.device)
        else:
            correct = (logits.argmax(1) == y).sum()
        return {role: StepResult(loss, correct)}

    def train_step(self, x: Tensor, y: Tensor, index: Tensor, view_ids: Tensor, epoch: int) -> dict[str, StepResult]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int) -> None:
        pass

    @classmethod
    def replays(cls, opts: dict) -> bool:
        """Whether the method's training step, with these options, can be replayed as a CUDA graph
        (:mod:`kdpipe.capture`): it runs on the device alone -- no host synchronisation, no CPU random
        numbers, the same kernels for every full batch of an epoch (``tests/test_capture_rehearsal.py``
        rehearses each method's claim on the CPU).  The cost plan reads it too.  Default: no."""
        return False

    def capture_key(self, epoch: int):
        """What the training step of ``epoch`` bakes into its kernels besides the learning rates (hashable);
        ``None`` when the step runs eagerly (:meth:`replays` is False)."""
        return () if self.replays(self.ctx.opts) else None

    def on_epoch_end(self, epoch: int) -> None:
        for scheduler in self.schedulers.values():
            scheduler.step()

    def current_lr(self) -> float:
        opt = next(iter(self.optimizers.values()))
        return float(opt.param_groups[0]["lr"])

    def total_epochs(self) -> int:
        """Epochs the engine runs (two-stage methods add their initialisation phase)."""
        return self.ctx.opts["epochs"]

    def selectable(self, epoch: int) -> bool:
        """Whether a 0-based epoch may be chosen as the best-on-validation checkpoint."""
        return True

    def identity(self, role: str) -> dict:
        """method / variant / teacher / student / generation of a role, for the summary."""
        return {"method": self.method, "variant": "", "teacher": "", "student": "", "generation": None}

    def info(self) -> dict:
        """Extra facts for run.json (adapters, teacher accuracy, ...)."""
        return {}

    def settings(self) -> dict:
        """The settings that set this run apart from others of its method (run.json ``settings``, the
        summary's ``settings`` column), in the order they are shown."""
        return {}

    def eval_logits(self, role: str, x: Tensor) -> Tensor:
        return self.roles[role](x).logits

    def evaluate_role(self, role: str, images: Tensor, labels: Tensor, normalize: Normalizer) -> tuple[float, float]:
        """(loss, accuracy %) of a role on held-out images; accuracy NaN for non-classifiers."""
        return evaluate(self, role, images, labels, normalize)

    def model_file(self, role: str) -> str:
        """File name of a role's best-on-val weights in the run directory."""
        return "model.pt" if role == next(iter(self.roles)) else f"model-{role}.pt"

    # -- state
    def train(self, mode: bool = True) -> None:
        for module in list(self.roles.values()) + list(self.extra_modules.values()):
            module.train(mode)

    def state_dict(self) -> dict:
        return {
            "roles": {k: m.state_dict() for k, m in self.roles.items()},
            "extra": {k: m.state_dict() for k, m in self.extra_modules.items()},
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "schedulers": {k: s.state_dict() for k, s in self.schedulers.items()},
        }

    def load_state_dict(self, state: dict) -> None:
        for key, group in (("roles", self.roles), ("extra", self.extra_modules)):
            for name, module in group.items():
                module.load_state_dict(state[key][name])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        for name, sched in self.schedulers.items():
            sched.load_state_dict(state["schedulers"][name])


# ---------------------------------------------------------------- RNG state


def seed_everything(seed: int) -> None:
    s = derived_seed("init", seed)
    random.seed(s)
    np.random.seed(s % (2**32))
    torch.manual_seed(s)


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {
        "python": random.getstate(),
        "numpy": (np_state[0], torch.from_numpy(np_state[1].copy()), *np_state[2:]),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict) -> None:
    random.setstate(_tuplify(state["python"]))
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy(), *rest))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def _tuplify(value):
    if isinstance(value, list):
        return tuple(_tuplify(v) for v in value)
    if isinstance(value, tuple):
        return tuple(_tuplify(v) for v in value)
    return value


# ---------------------------------------------------------------- evaluation


@torch.inference_mode()
def evaluate_model(
    model: nn.Module,
    ctx: Context,
    images: Tensor,
    labels: Tensor,
    normalize: Normalizer,
    batch_size: int = 1000,
    logits_fn=None,
):
    """(mean cross-entropy, top-1 accuracy in %) of a model on uint8 images, in eval mode."""
    if len(labels) == 0:
        return math.nan, math.nan
    logits_fn = logits_fn or (lambda x: model(x).logits)
    images, labels = images.to(ctx.device), labels.to(ctx.device)
    was_training = model.training
    model.eval()
    loss_sum = torch.zeros((), device=ctx.device)
    correct = torch.zeros((), device=ctx.device, dtype=torch.long)
    for start in range(0, len(labels), batch_size):
        x = normalize(images[start : start + batch_size])
        y = labels[start : start + batch_size]
        with ctx.autocast():
            logits = logits_fn(x).float()
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        correct += (logits.argmax(1) == y).sum()
    model.train(was_training)
    n = len(labels)
    return loss_sum.item() / n, 100.0 * correct.item() / n


def evaluate(task: Task, role: str, images: Tensor, labels: Tensor, normalize: Normalizer):
    """(mean cross-entropy, top-1 accuracy in %) of one of the task's roles."""
    return evaluate_model(
        task.roles[role], task.ctx, images, labels, normalize, logits_fn=lambda x: task.eval_logits(role, x)
    )


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """Batch slices over ``n`` samples; a trailing batch of one joins the previous batch (BatchNorm)."""
    bounds = [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] == 1:
        bounds[-2] = (bounds[-2][0], n)
        bounds.pop()
    return bounds


# ---------------------------------------------------------------- the loop


@dataclass
class FitResult:
    history: list[dict]
    best: dict[str, dict]
    train_time_s: float
    resumed_at: list[int] = field(default_factory=list)
    step_mode: str = "eager"  # "graph": the training step was replayed as a CUDA graph (kdpipe.capture)
    resumed_elsewhere: list[dict] = field(default_factory=list)  # see Training.__init__


def _better(candidate: dict, best: dict | None) -> bool:
    """Best on validation: higher val accuracy, ties broken by lower val loss, then later epoch."""
    if best is None:
        return True
    if math.isnan(candidate["val_loss"]):  # no validation split: the last epoch is the best
        return True
    if math.isnan(candidate["val_acc"]):  # not a classifier (e.g. an autoencoder): lowest val loss
        return candidate["val_loss"] <= best["val_loss"]
    return (candidate["val_acc"], -candidate["val_loss"]) >= (best["val_acc"], -best["val_loss"])


def write_metrics(path: Path, history: list[dict]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in history:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
    atomic_write_text(path, buffer.getvalue())


# The run directory whose training the current code serves, while several train in one process
# (fit_together): a run's train.log takes only its own lines (kdpipe.runner).
_RUN_DIR: contextvars.ContextVar[Path | None] = contextvars.ContextVar("kdpipe_run_dir", default=None)


def current_run_dir() -> Path | None:
    return _RUN_DIR.get()


@contextlib.contextmanager
def running_in(run_dir: Path):
    token = _RUN_DIR.set(run_dir)
    try:
        yield
    finally:
        _RUN_DIR.reset(token)


def trained_on(ctx: Context) -> dict:
    """What besides the options decides a run's floats, bit for bit: the device (a GPU's model), the CPU threads,
    and what ``auto`` settings resolved to there.  A checkpoint records it; a resume elsewhere goes on, but
    not bit for bit as the uninterrupted run would have (:class:`Training`)."""
    cuda = ctx.device.type == "cuda"
    return {
        "device": torch.cuda.get_device_name(ctx.device) if cuda else "cpu",
        "threads": None if cuda else torch.get_num_threads(),
        "amp_bf16": bool(ctx.amp),
        "channels_last": bool(ctx.channels_last),
        "cuda_graphs": bool(ctx.cuda_graphs) if cuda else None,
        "torch": str(torch.__version__),  # a plain string: a TorchVersion is no weights-only global
    }


def fit(task: Task, ctx: Context, fingerprint: dict, epochs: int | None = None) -> FitResult:
    """Train ``task`` for ``epochs`` epochs in ``ctx.run_dir``, resuming from its checkpoint."""
    run = Training(task, ctx, fingerprint, epochs)
    try:
        while not run.done:
            run.begin_epoch()
            for step in range(run.steps):
                run.step(step)
            run.end_epoch()
    except KeyboardInterrupt:  # said in train.log too: the run's record of why it stopped
        run.log_interrupt()
        raise
    return run.result()


def fit_together(runs: list[tuple[Task, Context, dict]], rng_states: list[dict] | None = None) -> list[FitResult]:
    """Train several runs in one process, step by step in turn, each as :func:`fit` would alone.

    On CUDA each run's steps go to a CUDA stream of its own, so that the kernels (graph replays) of
    different runs overlap on the GPU: small networks fill it only together.  A run's
    results are those of its own :func:`fit` (its steps see only its own tensors, in its own order,
    and draw from its own random number generators: ``rng_states[i]``, the state run i would start
    from alone, default the current one, is swapped in around each piece of its training -- CRD's
    negatives, BSS's targets; on CUDA each run has a generator state of its own, which its graphs
    replay from: :class:`OwnCudaGenerators`);
    its ``epoch_time_s`` is the shared wall time of the epoch.  Runs with fewer epochs end first.
    """
    states = [dict(state) for state in rng_states] if rng_states else [rng_state() for _ in runs]
    own = OwnCudaGenerators()
    trainings = []
    for i, ((task, ctx, fingerprint), state) in enumerate(zip(runs, states)):
        set_rng_state(state)
        with running_in(ctx.run_dir):
            trainings.append(Training(task, ctx, fingerprint))  # may resume a checkpoint's generators
        state.update(rng_state())
        own.add(i, ctx.device)  # a copy of the CUDA generator's state just saved
    streams = [torch.cuda.Stream(t.ctx.device) if t.ctx.device.type == "cuda" else None for t in trainings]
    _check_distinct(streams)
    try:
        _train_in_turn(trainings, states, streams, own)
    except KeyboardInterrupt:
        for training in trainings:
            with running_in(training.ctx.run_dir):
                training.log_interrupt()
        raise
    finally:
        own.close()
    return [t.result() for t in trainings]


class OwnCudaGenerators:
    """A CUDA generator state of its own for each run of :func:`fit_together`, made current in its
    device's default generator for the run's turns (``torch.Generator.graphsafe_set_state``).

    A CUDA graph's random ops read their seed and offset from device tensors of the generator state
    that was current at capture; each replay first fills them, on the replaying stream.  Runs that
    share one state share those tensors, so on streams of their own one run's fill can land before
    another's graph has read them: on an H200 (torch 2.11) CRD's second seed, trained beside its first,
    ended 0.15 of its largest weight away from its run alone, the first seed identical.  With states of
    their own, each run's graphs read only their own.  A torch without graph-safe states (``graph_safe``
    False: before 2.4) keeps those tensors per graph, and recent ones (2.14 here) per capture: there
    the swap changes nothing."""

    graph_safe = hasattr(torch.Generator, "graphsafe_set_state")

    def __init__(self):
        self.own: dict[int, tuple] = {}  # run -> (its device's default generator, the run's own state)
        self.originals: dict[int, tuple] = {}  # id(generator) -> (generator, the state it had)

    def add(self, run: int, device: torch.device) -> None:
        generator = _default_cuda_generator(device) if self.graph_safe else None
        if generator is not None:
            self.originals.setdefault(id(generator), (generator, generator.graphsafe_get_state()))
            self.own[run] = (generator, generator.clone_state())

    def enter(self, run: int) -> None:
        if run in self.own:
            generator, state = self.own[run]
            generator.graphsafe_set_state(state)

    def close(self) -> None:
        for generator, state in self.originals.values():
            generator.graphsafe_set_state(state)


def _check_distinct(streams: list) -> None:
    """Each run's stream its own: its graphs are captured on it and keep its cuBLAS workspace
    (kdpipe.capture.StepRunner.capture_stream).  torch.cuda.Stream() hands out a pool's streams in turn
    (32 a device in torch 2.x), so more runs than that on one device would share some."""
    handles = [s.cuda_stream for s in streams if s is not None]
    if len(set(handles)) < len(handles):
        raise KdpipeError(
            f"resources.seeds_together: {len(handles)} runs on one GPU need as many CUDA streams; torch gave "
            f"{len(set(handles))} distinct ones (train fewer seeds together)"
        )


def _default_cuda_generator(device: torch.device):
    """The default generator a run on ``device`` draws from; None off CUDA."""
    return torch.cuda.default_generators[_cuda_index(device)] if device.type == "cuda" else None


def _train_in_turn(trainings: list[Training], states: list[dict], streams: list, own: OwnCudaGenerators) -> None:
    @contextlib.contextmanager
    def serving(i: int, whole: bool = False, own_stream: bool = True):
        """Run i's turn: its run directory, CUDA stream and generators (``whole``: Python's and
        NumPy's too, at an epoch's ends; a step draws from torch's alone)."""
        device = trainings[i].ctx.device
        own.enter(i)  # first: the generator states set below then go to the run's own
        if whole:
            set_rng_state(states[i])
        else:
            _set_torch_rng(states[i], device)
        with running_in(trainings[i].ctx.run_dir):
            if streams[i] is None or not own_stream:
                yield
            else:
                with torch.cuda.stream(streams[i]):
                    yield
        if whole:
            states[i].update(rng_state())
        else:
            _save_torch_rng(states[i], device)

    while active := [i for i, t in enumerate(trainings) if not t.done]:
        for i in active:
            if streams[i] is not None:
                streams[i].wait_stream(torch.cuda.current_stream(trainings[i].ctx.device))
            with serving(i, whole=True):
                trainings[i].begin_epoch()
        for step in range(max(trainings[i].steps for i in active)):
            for i in active:
                if step < trainings[i].steps:
                    with serving(i):
                        trainings[i].step(step)
        for i in active:
            with serving(i, whole=True, own_stream=False):
                trainings[i].end_epoch()  # waits for the device; evaluates on the default stream


def _cuda_index(device: torch.device) -> int:
    return device.index if device.index is not None else torch.cuda.current_device()


def _save_torch_rng(state: dict, device: torch.device) -> None:
    """Into a :func:`rng_state` dict: the generators a training step draws from, torch's CPU one and ``device``'s."""
    state["torch"] = torch.get_rng_state()
    if device.type == "cuda":
        cuda = list(state["cuda"])
        cuda[_cuda_index(device)] = torch.cuda.get_rng_state(device)
        state["cuda"] = cuda


def _set_torch_rng(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"][_cuda_index(device)], device)


class Training:
    """One run being trained: its resumed state, the epoch in progress, and what an epoch's end writes.

    :func:`fit` drives one; :func:`fit_together` several in turn."""

    def __init__(self, task: Task, ctx: Context, fingerprint: dict, epochs: int | None = None):
        self.task, self.ctx, self.fingerprint = task, ctx, fingerprint
        opts, data, device = ctx.opts, ctx.data, ctx.device
        self.epochs = epochs or task.total_epochs()
        self.ckpt_path = ctx.run_dir / CHECKPOINT
        self.history: list[dict] = []
        self.best: dict[str, dict] = {}
        self.train_time = 0.0
        self.resumed_at: list[int] = []
        # resumptions where the checkpoint had been written elsewhere (another device, thread count, torch...):
        # {"epoch", "checkpoint": its trained_on, "resume": this process's}; run.json's resumed_elsewhere
        self.resumed_elsewhere: list[dict] = []
        self.where = trained_on(ctx)
        self.epoch = 0
        self.saved_epoch = 0  # the epoch the checkpoint on disk resumes from (0: none written)
        if self.ckpt_path.exists():
            state = load_run_checkpoint(self.ckpt_path)
            check_checkpoint_fingerprint(self.ckpt_path, state.get("fingerprint", {}), fingerprint)
            _load_task_state(self.ckpt_path, task, state["task"])
            self.history, self.best = state["history"], state["best"]
            self.train_time, self.resumed_at = state["train_time_s"], state["resumed_at"] + [state["epoch"]]
            self.epoch = self.saved_epoch = state["epoch"]
            set_rng_state(state["rng"])
            log.info("resuming %s from epoch %d/%d", ctx.run_dir, self.epoch, self.epochs)
            self.resumed_elsewhere = state.get("resumed_elsewhere", [])
            written = state.get("trained_on")  # absent in checkpoints of kdpipe before 2026-11-28
            if written is not None and written != self.where and self.epoch < self.epochs:
                self.resumed_elsewhere = self.resumed_elsewhere + [
                    {"epoch": self.epoch, "checkpoint": written, "resume": self.where}
                ]
                changed = ", ".join(
                    f"{key} {written.get(key)} -> {value}"
                    for key, value in self.where.items()
                    if written.get(key) != value
                )
                log.warning(
                    "the checkpoint was written elsewhere (%s): the run goes on from epoch %d, but its numbers "
                    "will not be bit for bit those of an uninterrupted run (run.json: resumed_elsewhere)",
                    changed,
                    self.epoch,
                )
        if self.epoch >= self.epochs:  # the checkpoint was final (killed after its last epoch, or outputs deleted)
            log.info("checkpoint %s is final; rewriting the run's outputs", self.ckpt_path)
            write_metrics(ctx.run_dir / "metrics.csv", self.history)

        self.aug = aug = data.augmentation
        self.normalize = normalize = Normalizer(data.mean, data.std, device, ctx.channels_last)
        padded_train = aug.pad_images(data.train_x).to(device)
        train_y = data.train_y.to(device)
        self.val = data.val_x.to(device), data.val_y.to(device)
        self.test = data.test_x.to(device), data.test_y.to(device)
        self.n_train = len(train_y)
        self.bounds = batch_bounds(self.n_train, opts["batch_size"])

        def batch(index_dev: Tensor, views: Tensor) -> tuple[Tensor, Tensor]:
            return normalize(aug.apply(padded_train[index_dev], views)), train_y[index_dev]

        self.step_runner = StepRunner(task, batch, opts["batch_size"])

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    @property
    def steps(self) -> int:
        return len(self.bounds)

    def begin_epoch(self) -> None:
        device, epoch = self.ctx.device, self.epoch
        self.plan = epoch_plan(self.ctx.opts["seed"], epoch, self.n_train, self.aug)
        self.task.train(True)
        self.task.on_epoch_start(epoch)
        self.lr = self.task.current_lr()
        self.loss_sums: dict[str, Tensor] = {}
        self.correct_sums: dict[str, Tensor] = {}
        self.bad_step = torch.full((), -1, device=device, dtype=torch.long)
        self.t0 = time.perf_counter()
        # the epoch's order and views on the device once; a step slices them
        self.order_dev, self.views_all_dev = self.plan.order.to(device), self.plan.view_ids.to(device)

    def step(self, step: int) -> None:
        lo, hi = self.bounds[step]
        index = self.plan.order[lo:hi]
        views = self.plan.view_ids[index]
        results = self.step_runner(index, views, self.order_dev[lo:hi], self.views_all_dev, self.epoch)
        for role, res in results.items():
            loss = res.loss.detach().float()
            self.loss_sums[role] = self.loss_sums.get(role, 0) + loss * (hi - lo)
            self.correct_sums[role] = self.correct_sums.get(role, 0) + res.correct.detach()
            self.bad_step = torch.where((self.bad_step < 0) & ~torch.isfinite(loss), step, self.bad_step)
        if (step + 1) % self.ctx.opts["print_freq"] == 0:
            role = next(iter(results))
            log.info(
                "epoch %d/%d step %d/%d  %s loss %.4f",
                self.epoch + 1,
                self.epochs,
                step + 1,
                self.steps,
                role,
                float(results[role].loss.detach()),
            )

    def end_epoch(self) -> None:
        task, ctx, epoch = self.task, self.ctx, self.epoch
        if ctx.device.type == "cuda":
            torch.cuda.synchronize(ctx.device)
        epoch_time = time.perf_counter() - self.t0
        if int(self.bad_step) >= 0:
            if epoch > 0 and self.ckpt_path.is_file():
                kept = f"stopped, the last good checkpoint (epoch {epoch}) is kept in {self.ckpt_path}"
            else:
                kept = "stopped before any checkpoint was written (one is written after each finished epoch)"
            raise NonFiniteLoss(
                f"non-finite loss at epoch {epoch + 1}, batch {int(self.bad_step) + 1}/{self.steps}; {kept}"
            )
        task.on_epoch_end(epoch)
        self.train_time += epoch_time
        n_train = self.n_train
        for role in task.roles:
            val_loss, val_acc = task.evaluate_role(role, *self.val, self.normalize)
            test_loss, test_acc = task.evaluate_role(role, *self.test, self.normalize)
            sums, correct = self.loss_sums, self.correct_sums
            row = {
                "epoch": epoch + 1,
                "role": role,
                "lr": self.lr,
                "train_loss": float(sums[role]) / n_train if role in sums else math.nan,
                "train_acc": 100.0 * float(correct[role]) / n_train if role in correct else math.nan,
                "val_loss": val_loss,
                "val_acc": val_acc,
                "test_loss": test_loss,
                "test_acc": test_acc,
                "epoch_time_s": epoch_time,
                "images_per_s": n_train / epoch_time if epoch_time > 0 else math.nan,
            }
            self.history.append(row)
            if task.selectable(epoch) and _better(row, self.best.get(role)):
                self.best[role] = {
                    "epoch": epoch + 1,
                    "val_acc": val_acc,
                    "val_loss": val_loss,
                    "test_acc": test_acc,
                    "state": {k: v.detach().to("cpu", copy=True) for k, v in task.roles[role].state_dict().items()},
                }
            log.info(
                "epoch %d/%d %-8s lr %.4g  train loss %.4f acc %.2f  val acc %.2f  test acc %.2f  %.1fs (%.0f img/s)",
                epoch + 1,
                self.epochs,
                role,
                self.lr,
                row["train_loss"],
                row["train_acc"],
                val_acc,
                test_acc,
                epoch_time,
                row["images_per_s"],
            )
        self.epoch += 1
        atomic_save(
            {
                "fingerprint": self.fingerprint,
                "epoch": self.epoch,
                "task": task.state_dict(),
                "history": self.history,
                "best": self.best,
                "train_time_s": self.train_time,
                "resumed_at": self.resumed_at,
                "resumed_elsewhere": self.resumed_elsewhere,
                "trained_on": self.where,
                "rng": rng_state(),
            },
            self.ckpt_path,
        )
        self.saved_epoch = self.epoch
        write_metrics(ctx.run_dir / "metrics.csv", self.history)

    def result(self) -> FitResult:
        return FitResult(
            self.history, self.best, self.train_time, self.resumed_at, self.step_runner.mode, self.resumed_elsewhere
        )

    def log_interrupt(self) -> None:
        """train.log's line for Ctrl-C (or SIGINT): where the run stopped and what resumes it."""
        if self.done:
            return
        kept = (
            f"its checkpoint after epoch {self.saved_epoch} resumes it when run again"
            if self.saved_epoch
            else "no epoch finished: run again, it starts from epoch 1"
        )
        log.info("interrupted in epoch %d/%d; %s", self.epoch + 1, self.epochs, kept)


def _load_task_state(path: Path, task: Task, state: dict) -> None:
    """``task`` resumed from a checkpoint's state; a state whose modules or optimizers do not fit the task (written
    by a kdpipe whose form of the method had other parameters, e.g. an init phase that trained more of the
    student) is refused in one line, the checkpoint left as it is."""
    try:
        task.load_state_dict(state)
    except torch.cuda.OutOfMemoryError:  # the device, not the checkpoint
        raise
    except (KeyError, RuntimeError, ValueError) as exc:
        reason = " ".join(str(exc).split())
        reason = reason if len(reason) <= 160 else reason[:157] + "..."
        raise KdpipeError(
            f"{path}: checkpoint does not fit this run's modules or optimizers ({type(exc).__name__}: {reason}); "
            "it was written by another version of kdpipe's form of this method: resume it with that kdpipe, or "
            "move it away to train the run from epoch 0"
        ) from exc


def check_checkpoint_fingerprint(path: Path, stored: dict, current: dict) -> None:
    keys = differing_keys(stored, current)
    if keys:  # the first, by name
        key = keys[0]
        was, now = fingerprint_value(stored, key), fingerprint_value(current, key)
        raise KdpipeError(
            f"{path}: checkpoint was made with {key}={was!r}, this run has {key}={now!r}; "
            "use the original settings to resume, another --note / save_root for a new run, or --other_settings "
            "replace to set it aside"
        )
