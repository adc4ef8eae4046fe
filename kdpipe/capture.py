"""The training step, replayed as a CUDA graph where the method allows it.

Small CIFAR networks are launch-bound on a GPU: a ResNet-20 step at batch 128 is a few hundred
kernels of a few microseconds each, and the host cannot issue them as fast as the card runs
them.  :class:`StepRunner` records one whole step -- augmentation of the batch, forward,
loss, backward and the (foreach) optimizer update -- as a CUDA graph and then replays it:
one launch per step, no host synchronisation.

What it keys a graph on (a new key captures a new graph; the old one is freed):

* the task's :meth:`~kdpipe.engine.Task.capture_key` for the epoch -- the Python values its step
  bakes into kernels (a two-stage mode's phase, DKD's warm-up factor, ...); ``None``: the
  method's step cannot be captured (it syncs with the host or draws on the CPU), it runs eagerly;
* the learning rate of every optimizer (a Python number inside the update kernels);
* the batch size: the graph is captured for full batches; the epoch's last, shorter batch
  runs eagerly on the same parameters, so the graph's shapes stay static.

The first :data:`WARMUP_STEPS` steps of a process, and the first step under every new key, run
eagerly on a side stream (cuDNN's algorithm search, lazy initialisation, the optimizer's momentum
buffers -- also a fresh optimizer's in a later phase), as PyTorch requires before capture, and the
graphs are captured there: the run's own stream where
:func:`kdpipe.engine.fit_together` gives it one, else a side stream of the runner's own
(:meth:`StepRunner.capture_stream`).  A step that cannot be captured after all (an error while
recording) is run eagerly, the run goes on eagerly, and why is logged and returned in
:attr:`StepRunner.mode`.
On the CPU every step is the eager step, unchanged.

Which methods replay their step each task declares (:meth:`~kdpipe.engine.Task.replays`);
:class:`ReplayRehearsal` holds them to it on the CPU (``tests/test_capture_rehearsal.py``): it runs
the steps as this runner would use graphs and finds what a replay would get wrong.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Hashable
from pathlib import Path

import torch
from torch import Tensor
from torch.utils._python_dispatch import TorchDispatchMode

log = logging.getLogger("kdpipe")

WARMUP_STEPS = 3


class StepRunner:
    """Runs ``task.train_step`` on batches given as image indices and view ids.

    ``batch(index, views)`` makes the (images, labels) of a batch on the device from device
    index and view tensors; it is recorded into the graph with the step.
    """

    def __init__(self, task, batch: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], full_batch: int):
        self.task = task
        self.batch = batch
        self.full_batch = full_batch
        ctx = task.ctx
        self.enabled = ctx.device.type == "cuda" and bool(ctx.cuda_graphs)
        self.failure: str | None = None
        self.graph: torch.cuda.CUDAGraph | None = None
        self.key: Hashable = None
        self.warmed_key: Hashable = None  # the key of the last warm-up step (a graph is captured only after one)
        self.static: tuple[Tensor, Tensor] | None = None  # index, views
        self.results: dict | None = None
        self.eager_steps = 0
        self.warmup_steps = WARMUP_STEPS
        self.captures = 0
        self._side: torch.cuda.Stream | None = None

    @property
    def mode(self) -> str:
        """How this process ran the steps: ``graph`` (full batches replayed), ``eager``, or why not."""
        if self.failure:
            return f"eager (capture failed: {self.failure})"
        return "graph" if self.captures else "eager"

    # -- one batch
    def __call__(self, index: Tensor, views: Tensor, index_dev: Tensor, view_ids_dev: Tensor, epoch: int) -> dict:
        """The step's results for the batch of images ``index`` in views ``views`` (CPU tensors);
        ``index_dev`` is ``index`` on the device, ``view_ids_dev`` the epoch's view of every image there."""
        key = self.graph_key(len(index), epoch)
        if key is None:
            return self.eager(index, views, index_dev, epoch)
        if self.eager_steps < self.warmup_steps or (key != self.key and key != self.warmed_key):
            # a new key's first step runs eagerly: what the step makes lazily (a fresh optimizer's momentum
            # buffers, as a two-stage mode's separate CE-phase optimizer has) is made there, not recorded --
            # a graph that recorded SGD's first step would replay buf = grad.clone() every step
            self.warmed_key = key
            return self.warmup(index, views, index_dev, epoch)
        if key != self.key and not self.capture(key, index_dev, view_ids_dev[index_dev], epoch):
            return self.eager(index, views, index_dev, epoch)
        self.static[0].copy_(index_dev)
        torch.index_select(view_ids_dev, 0, index_dev, out=self.static[1])
        return self.replay(epoch)

    def replay(self, epoch: int) -> dict:
        """The captured step on the batch now in the static inputs."""
        self.graph.replay()
        return self.results

    def graph_key(self, size: int, epoch: int) -> Hashable:
        if not self.enabled or size != self.full_batch:
            return None
        task_key = self.task.capture_key(epoch)
        if task_key is None:
            return None
        lrs = tuple(group["lr"] for opt in self.task.optimizers.values() for group in opt.param_groups)
        return (task_key, lrs)

    def eager(self, index: Tensor, views: Tensor, index_dev: Tensor, epoch: int) -> dict:
        x, y = self.batch(index_dev, views)
        return self.task.train_step(x, y, index, views, epoch)

    def capture_stream(self) -> torch.cuda.Stream:
        """Where warm-ups and captures run: the current stream unless it is the device's default (a run
        of :func:`kdpipe.engine.fit_together` steps on a stream of its own), else one side stream of this
        runner's, the same for all its captures.  Never a stream of another run: a graph keeps the cuBLAS
        workspace of the stream it was captured on, and torch.cuda.Stream() hands out a pool's streams in
        turn, so a new side stream per capture could be another run's, whose steps would then share the
        graph's workspace."""
        device = self.task.ctx.device
        current = torch.cuda.current_stream(device)
        if current != torch.cuda.default_stream(device):
            return current
        if self._side is None:
            self._side = torch.cuda.Stream(device)
        return self._side

    def warmup(self, index: Tensor, views: Tensor, index_dev: Tensor, epoch: int) -> dict:
        """An eager step on the capture stream (PyTorch's warm-up before capture); a real training step."""
        side = self.capture_stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            results = self.eager(index, views, index_dev, epoch)
        torch.cuda.current_stream().wait_stream(side)
        self.eager_steps += 1
        return results

    def capture(self, key: Hashable, index_dev: Tensor, views_dev: Tensor, epoch: int) -> bool:
        """Record the step for ``key`` (not run: the caller replays it); False if it cannot be captured."""
        self.release()
        static = (index_dev.clone(), views_dev.clone())
        for opt in self.task.optimizers.values():
            opt.zero_grad(set_to_none=True)  # the graph's backward allocates the gradients in its pool
        graph = torch.cuda.CUDAGraph()
        side = self.capture_stream()
        try:
            # the outer stream context restores the current stream whatever happens: torch.cuda.graph leaves its
            # own stream context only after capture_end succeeds, so a failed capture would leave the side stream
            # current for the rest of the run
            with torch.cuda.stream(side), torch.cuda.graph(graph, stream=side):
                x, y = self.batch(*static)
                results = self.task.train_step(x, y, static[0], static[1], epoch)
        except Exception as exc:  # a host sync or CPU work inside the step: this method runs eagerly
            self.enabled = False
            self.failure = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
            log.warning("training step not captured as a CUDA graph, running eagerly: %s", exc)
            torch.cuda.synchronize()
            return False
        # what capture_begin queued on a side stream (the generator state's seed and offset fills, before
        # per-capture states) comes before the first replay's own fills on this stream
        torch.cuda.current_stream().wait_stream(side)
        self.graph, self.key, self.static, self.results = graph, key, static, results
        self.captures += 1
        log.debug("captured the training step as a CUDA graph (key %r)", key)
        return True

    def release(self) -> None:
        self.graph = self.key = self.static = self.results = None


# ---------------------------------------------------------------- rehearsal on the CPU

# Ops after which the host holds a value of the device's (a synchronisation), or whose output's shape
# depends on the data: a capture fails on them, or would keep one batch's shape for every replay.
HOST_OPS = frozenset(
    {
        "aten::_local_scalar_dense",  # .item(), int(t), bool(t), float(t)
        "aten::nonzero",
        "aten::masked_select",
        "aten::_unique",
        "aten::_unique2",
        "aten::unique_dim",
        "aten::unique_consecutive",
        "aten::equal",
        "aten::is_nonzero",
        "aten::allclose",
    }
)
MASK_INDEXED_OPS = frozenset({"aten::index", "aten::index_put", "aten::index_put_", "aten::_index_put_impl_"})
HOST_DATA_OPS = frozenset({"aten::lift_fresh", "aten::lift_fresh_copy"})  # torch.tensor(python data) in the step


class ReplayRehearsal(StepRunner):
    """A CPU stand-in for :class:`StepRunner` that checks a method's claim to be capturable.

    It runs every step eagerly, as the CPU does, but the way the GPU runner would use a graph: the
    same keys (:meth:`~kdpipe.engine.Task.capture_key`, the learning rates, full batches), the same
    warm-up, the batch copied into static index and view tensors.  The step of a new key is recorded
    op by op (:class:`StepTrace`); each later step under that key must record the same ops with the
    same Python values, shapes and memory read from outside the step -- what a graph replays -- and
    must leave the Python state of the task and its modules as it was.  What differs, or an op a
    capture cannot hold (a host synchronisation, a data-dependent shape, data copied from Python), is
    a *finding*: a graph replay of that step would fail, or silently compute something else.
    Training is unaffected: the rehearsed run equals the eager one bit for bit.

    It sees the ops a step calls, not what a native kernel does inside: a sync there (torch.multinomial's
    check of its probabilities, an SVD's convergence check) fails the capture on the GPU, and that run
    goes on eagerly and says so (:attr:`StepRunner.mode`) -- loudly, not wrongly.  Syncs that only the
    CPU's kernels make (F.one_hot checks its labels' range off CUDA) are findings here all the same.
    """

    def __init__(
        self, task, batch: Callable[[Tensor, Tensor], tuple[Tensor, Tensor]], full_batch: int, warmup_steps: int = 1
    ):
        super().__init__(task, batch, full_batch)
        self.enabled = True
        self.warmup_steps = warmup_steps  # one eager step makes the optimizer's state; PyTorch's 3 are for the GPU
        self.findings: list[str] = []
        self.reference: StepTrace | None = None
        self.compared = 0

    @property
    def mode(self) -> str:
        return f"rehearsed ({self.captures} keys, {self.compared} steps compared, {len(self.findings)} findings)"

    def warmup(self, index: Tensor, views: Tensor, index_dev: Tensor, epoch: int) -> dict:
        self.eager_steps += 1
        return self.eager(index, views, index_dev, epoch)

    def capture(self, key: Hashable, index_dev: Tensor, views_dev: Tensor, epoch: int) -> bool:
        self.release()
        self.key, self.static, self.reference = key, (index_dev.clone(), views_dev.clone()), None
        self.captures += 1
        return True

    def replay(self, epoch: int) -> dict:
        before = python_state(self.task)
        with StepTrace() as trace:
            x, y = self.batch(*self.static)
            results = self.task.train_step(x, y, self.static[0], self.static[1], epoch)
        where = f"{type(self.task).__name__}, epoch {epoch}, key {self.key!r}"
        self.findings += [f"{where}: {problem}" for problem in trace.problems]
        changed = [name for name, value in python_state(self.task).items() if before.get(name, value) != value]
        if changed:
            self.findings.append(f"{where}: the step changes {', '.join(changed)} (a replayed graph would not)")
        if self.reference is None:
            self.reference = trace
        else:
            self.compared += 1
            difference = self.reference.difference(trace)
            if difference:
                self.findings.append(f"{where}: {difference}")
        return results

    def release(self) -> None:
        super().release()
        self.reference = None


class StepTrace(TorchDispatchMode):
    """The ops one step runs, each with its Python arguments, its tensors' shapes, dtypes and strides,
    and where each tensor comes from: an earlier op of the step (``("step", i)``) or memory held
    outside it (``("held", address)``: parameters, buffers, optimizer state, the static batch)."""

    def __init__(self):
        super().__init__()
        self.ops: list[tuple] = []
        self.problems: list[str] = []
        self.where: list[str] = []  # the line of code outside torch that ran each op
        self._made: dict[int, int] = {}  # storage address -> the op that last wrote a tensor there

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._schema.name  # without the overload
        if name.startswith("profiler::"):  # the optimizer's record_function markers: no kernels
            return func(*args, **kwargs)
        self._check(name, args, kwargs)
        signature = (str(func), self._describe(args), self._describe(kwargs))
        out = func(*args, **kwargs)
        index = len(self.ops)
        self.ops.append(signature)
        self.where.append(_caller())
        for t in _tensors(out):
            if t.numel():
                self._made[t.untyped_storage().data_ptr()] = index
        return out

    def _check(self, name: str, args, kwargs) -> None:
        problems = []
        if name in HOST_OPS:
            problems.append(f"{name} synchronises with the host or has a data-dependent shape")
        elif name in HOST_DATA_OPS:
            problems.append(f"{name}: a tensor made from Python data inside the step")
        elif name in MASK_INDEXED_OPS and any(t.dtype in (torch.bool, torch.uint8) for t in _tensors(args[1:2])):
            problems.append(f"{name} with a boolean mask: a data-dependent shape")
        elif name == "aten::repeat_interleave" and kwargs.get("output_size") is None and len(args) == 1:
            problems.append(f"{name} without output_size synchronises with the host")
        if any(isinstance(v, torch.Generator) for v in _leaves((args, kwargs))):
            problems.append(f"{name} draws from an explicit torch.Generator, which a graph does not advance")
        self.problems += [f"{problem} (at {_caller()})" for problem in problems]

    def _describe(self, value):
        if isinstance(value, Tensor):
            if not value.numel():
                origin = ("empty",)
            else:
                address = value.untyped_storage().data_ptr()
                made = self._made.get(address)
                origin = ("step", made) if made is not None else ("held", address, value.storage_offset())
            return ("tensor", tuple(value.shape), value.dtype, value.stride(), origin)
        if isinstance(value, (list, tuple)):
            return tuple(self._describe(v) for v in value)
        if isinstance(value, dict):
            return tuple((k, self._describe(v)) for k, v in value.items())
        if isinstance(value, float):
            return ("float", value.hex())
        if isinstance(value, (int, bool, str, type(None))):
            return value
        return repr(value)

    def difference(self, other: StepTrace) -> str:
        """What ``other`` (a later step under the same key) does differently, or ''."""
        for i, (mine, theirs) in enumerate(zip(self.ops, other.ops)):
            if mine != theirs:
                what = "reads other memory held outside the step" if _only_held_differs(mine, theirs) else "differs"
                return (
                    f"op {i} ({mine[0]} at {other.where[i]}) {what} in a later step: "
                    f"recorded {mine[1:]!r:.300}, then {theirs[1:]!r:.300}"
                )
        if len(self.ops) != len(other.ops):
            return f"a later step runs {len(other.ops)} ops, the recorded one {len(self.ops)}"
        return ""


def _only_held_differs(a, b) -> bool:
    """Whether two op signatures differ only in the addresses of held tensors."""

    def strip(value):
        if isinstance(value, tuple) and value and value[0] == "held":
            return ("held",)
        if isinstance(value, tuple):
            return tuple(strip(v) for v in value)
        return value

    return strip(a) == strip(b)


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch and this module (who ran the op)."""
    frame = sys._getframe(2)
    while frame is not None:
        name = frame.f_code.co_filename
        if f"{os.sep}torch{os.sep}" not in name and name != __file__:
            return f"{Path(name).name}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _leaves(value):
    if isinstance(value, (list, tuple)):
        for v in value:
            yield from _leaves(v)
    elif isinstance(value, dict):
        for v in value.values():
            yield from _leaves(v)
    else:
        yield value


def _tensors(value):
    return [v for v in _leaves(value) if isinstance(v, Tensor)]


def python_state(task) -> dict[str, object]:
    """The plain Python values (numbers, strings, flags) held by a task and its modules, by name."""
    state: dict[str, object] = {}
    plain = (int, float, bool, str, type(None))
    modules = {
        **{f"roles.{k}": m for k, m in task.roles.items()},
        **{f"extra.{k}": m for k, m in task.extra_modules.items()},
    }
    for name, value in vars(task).items():
        if isinstance(value, plain):
            state[f"task.{name}"] = value
        elif isinstance(value, torch.nn.Module):
            modules.setdefault(name, value)
    for prefix, root in modules.items():
        for path, module in root.named_modules(prefix=prefix):
            for name, value in vars(module).items():
                if isinstance(value, plain):
                    state[f"{path}.{name}"] = value
    return state
