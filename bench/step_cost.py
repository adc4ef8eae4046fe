"""Training step time of every method relative to plain training of the same student.

One process, same data, same machine: the ratios are what matters, not the absolute times.
Each method's task is built exactly as its entry point builds it and timed on real
augmented batches (augmentation + forward + backward + update).

    .venv/bin/python bench/step_cost.py --batch_size 32 --steps 20          # digits, CPU
    .venv/bin/python bench/step_cost.py --only st,ft,crd,dml,bss            # a subset
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from kdpipe.capture import WARMUP_STEPS, StepRunner
from kdpipe.data import Normalizer, epoch_plan, load_data
from kdpipe.engine import Context, batch_bounds, seed_everything
from kdpipe.losses import LOSSES
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.bss import BoundarySampleTask
from kdpipe.methods.crd import ContrastiveTask
from kdpipe.methods.dml import MutualTask
from kdpipe.methods.ft import FactorTransferTask
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.objectives.ft import Paraphraser
from kdpipe.options import resolve
from kdpipe.runner import select_device


def time_task(task, ctx, steps: int, epoch: int = 0, warmup: int = 3, graphs: bool | None = None) -> float:
    """Seconds per training step in (0-based) ``epoch``, as the engine runs it (:class:`kdpipe.capture.StepRunner`:
    on CUDA the step replayed as a CUDA graph where the method allows; ``graphs=False``: eagerly).  The
    timed steps run back to back, timed as one block (no synchronisation between them)."""
    data, device = ctx.data, ctx.device
    aug = data.augmentation
    normalize = Normalizer(data.mean, data.std, device, ctx.channels_last)
    padded = aug.pad_images(data.train_x).to(device)
    labels = data.train_y.to(device)
    plan = epoch_plan(0, epoch, len(labels), aug)
    order_dev, views_dev = plan.order.to(device), plan.view_ids.to(device)
    batch_size = ctx.opts["batch_size"]
    bounds = [b for b in batch_bounds(len(labels), batch_size) if b[1] - b[0] == batch_size]  # full batches

    def batch(index_dev, views):
        return normalize(aug.apply(padded[index_dev], views)), labels[index_dev]

    saved = ctx.cuda_graphs
    if graphs is not None:
        ctx.cuda_graphs = graphs
    runner = StepRunner(task, batch, batch_size)
    ctx.cuda_graphs = saved
    task.train(True)
    task.on_epoch_start(epoch)

    def run(i: int) -> None:
        lo, hi = bounds[i % len(bounds)]
        index = plan.order[lo:hi]
        runner(index, plan.view_ids[index], order_dev[lo:hi], views_dev, epoch)

    for i in range(max(warmup, WARMUP_STEPS + 1 if runner.enabled else 0)):
        run(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for i in range(steps):
        run(i)
    if device.type == "cuda":
        torch.cuda.synchronize()
    time_task.last_mode = runner.mode
    return (time.perf_counter() - t0) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_name", default="digits")
    parser.add_argument("--img_root", default="data")
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=12, help="schedule length (BSS is timed mid-schedule)")
    parser.add_argument("--only", default="", help="comma list of methods/modes (default: all)")
    parser.add_argument("--cuda", type=int, default=None)
    args = parser.parse_args()

    device = select_device(args.cuda)
    data = load_data(args.data_name, args.img_root)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-bench-"))
    teacher_path = tmp / "teacher.pt"
    torch.save(build_model(args.teacher, data.num_classes).state_dict(), teacher_path)
    channels = build_model(args.teacher, data.num_classes).stage_channels[-1]
    para_path = tmp / "paraphraser.pt"
    torch.save(Paraphraser(channels, 0.5).state_dict(), para_path)
    common = dict(data_name=args.data_name, img_root=args.img_root, batch_size=args.batch_size, epochs=args.epochs)
    pair = dict(t_model=str(teacher_path), t_name=args.teacher, s_name=args.student)

    def context(entry, **opts):
        seed_everything(0)
        return Context(resolve(entry, {**common, **opts}), data, device, tmp)

    # (label, entry, task class, options, epoch to time)
    cases = [(mode, "kd", DistillTask, dict(pair, kd_mode=mode), 10**6) for mode in LOSSES]
    cases += [
        ("ft", "ft", FactorTransferTask, dict(pair, paraphraser=str(para_path)), 0),
        ("crd", "crd", ContrastiveTask, dict(pair), 0),
        (f"dml ({args.student}+{args.student})", "dml", MutualTask, dict(peers=[args.student, args.student]), 0),
        ("bss (attack epoch)", "bss", BoundarySampleTask, dict(pair), args.epochs // 2),
    ]
    wanted = {w for w in args.only.split(",") if w}
    base_ctx = context("base", net_name=args.student)
    plain = time_task(SupervisedTask(base_ctx), base_ctx, args.steps)
    print(
        f"device {device}, data {args.data_name} {tuple(data.image_shape)}, batch {args.batch_size}, "
        f"{args.teacher} -> {args.student}, plain {args.student}: {plain * 1000:.1f} ms/step"
    )
    print("| method | ms/step | × plain |")
    print("|---|---:|---:|")
    for label, entry, task_cls, opts, epoch in cases:
        if wanted and label.split(" ")[0] not in wanted:
            continue
        ctx = context(entry, **opts)
        task = task_cls(ctx)
        # two-stage kd modes: time the main phase (their init phase costs like any feature mode)
        epoch = getattr(task, "init_epochs", 0) if epoch == 10**6 else epoch
        seconds = time_task(task, ctx, args.steps, epoch)
        print(f"| {label} | {seconds * 1000:.1f} | {seconds / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
