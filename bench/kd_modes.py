"""Student step time of every kd mode relative to plain training of the same student.

One process, same data, same machine: the ratios are what matters, not the absolute times.

    .venv/bin/python bench/kd_modes.py --teacher resnet110 --student resnet20 --steps 20
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from kdpipe.data import Normalizer, epoch_plan, load_data
from kdpipe.engine import Context, batch_bounds, seed_everything
from kdpipe.losses import LOSSES
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.options import resolve
from kdpipe.runner import select_device


def time_task(task, ctx, steps: int, warmup: int = 3) -> float:
    """Seconds per training step (augmentation + forward + backward + update)."""
    data, device = ctx.data, ctx.device
    aug = data.augmentation
    normalize = Normalizer(data.mean, data.std, device, ctx.channels_last)
    padded = aug.pad_images(data.train_x).to(device)
    labels = data.train_y.to(device)
    plan = epoch_plan(0, 0, len(labels), aug)
    bounds = batch_bounds(len(labels), ctx.opts["batch_size"])
    task.train(True)
    epoch = getattr(task, "init_epochs", 0)  # time the main phase of two-stage modes
    task.on_epoch_start(epoch)
    total = 0.0
    for i in range(warmup + steps):
        lo, hi = bounds[i % len(bounds)]
        index = plan.order[lo:hi]
        views = plan.view_ids[index]
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        x = normalize(aug.apply(padded[index.to(device)], views))
        task.train_step(x, labels[index.to(device)], index, views, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if i >= warmup:
            total += time.perf_counter() - t0
    return total / steps


def context(entry: str, data, device, **opts) -> Context:
    return Context(resolve(entry, opts), data, device, Path("/nonexistent"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_name", default="digits")
    parser.add_argument("--img_root", default="data")
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--modes", default=",".join(LOSSES))
    parser.add_argument("--cuda", type=int, default=None)
    args = parser.parse_args()

    device = select_device(args.cuda)
    data = load_data(args.data_name, args.img_root)
    common = dict(data_name=args.data_name, batch_size=args.batch_size, epochs=4)
    teacher_path = Path("/tmp/kdpipe-bench-teacher.pt")
    torch.save(build_model(args.teacher, data.num_classes).state_dict(), teacher_path)

    seed_everything(0)
    base_ctx = context("base", data, device, net_name=args.student, **common)
    plain = time_task(SupervisedTask(base_ctx), base_ctx, args.steps)
    print(f"device {device}, data {args.data_name} {tuple(data.image_shape)}, batch {args.batch_size}, "
          f"{args.teacher} -> {args.student}")
    print(f"plain {args.student}: {plain * 1000:.1f} ms/step")
    print("| mode | ms/step | × plain |")
    print("|---|---:|---:|")
    for mode in args.modes.split(","):
        seed_everything(0)
        ctx = context("kd", data, device, kd_mode=mode, t_model=str(teacher_path), t_name=args.teacher,
                      s_name=args.student, **common)
        seconds = time_task(DistillTask(ctx), ctx, args.steps)
        print(f"| {mode} | {seconds * 1000:.1f} | {seconds / plain:.2f} |", flush=True)


if __name__ == "__main__":
    main()
