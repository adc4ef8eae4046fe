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

The first :data:`WARMUP_STEPS` steps of a process run eagerly on a side stream (cuDNN's
algorithm search, lazy initialisation, the optimizer's momentum buffers), as PyTorch requires
before capture.  A step that cannot be captured after all (an error while recording) is run
eagerly, the run goes on eagerly, and why is logged and returned in :attr:`StepRunner.mode`.
On the CPU every step is the eager step, unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

import torch
from torch import Tensor

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
        self.static: tuple[Tensor, Tensor] | None = None  # index, views
        self.results: dict | None = None
        self.eager_steps = 0
        self.captures = 0

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
        if self.eager_steps < WARMUP_STEPS:
            return self.warmup(index, views, index_dev, epoch)
        if key != self.key and not self.capture(key, index_dev, view_ids_dev[index_dev], epoch):
            return self.eager(index, views, index_dev, epoch)
        self.static[0].copy_(index_dev)
        torch.index_select(view_ids_dev, 0, index_dev, out=self.static[1])
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

    def warmup(self, index: Tensor, views: Tensor, index_dev: Tensor, epoch: int) -> dict:
        """An eager step on a side stream (PyTorch's warm-up before capture); a real training step."""
        side = torch.cuda.Stream()
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
        try:
            with torch.cuda.graph(graph):
                x, y = self.batch(*static)
                results = self.task.train_step(x, y, static[0], static[1], epoch)
        except Exception as exc:  # a host sync or CPU work inside the step: this method runs eagerly
            self.enabled = False
            self.failure = f"{type(exc).__name__}: {(str(exc).splitlines() or [''])[0][:160]}"
            log.warning("training step not captured as a CUDA graph, running eagerly: %s", exc)
            torch.cuda.synchronize()
            return False
        self.graph, self.key, self.static, self.results = graph, key, static, results
        self.captures += 1
        log.debug("captured the training step as a CUDA graph (key %r)", key)
        return True

    def release(self) -> None:
        self.graph = self.key = self.static = self.results = None
