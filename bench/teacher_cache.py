"""What the exact teacher cache buys: st-KD step cost with the cache and with the live teacher.

Reports, in one process on one machine (ratios, not absolute times):
  1. st-KD step time reading the cache / plain student step time   (target <= 1.10)
  2. st-KD step time with the live teacher / plain student step time
  3. cache build time / one plain student run of the configured length
  4. cache size on disk for this dataset, and for CIFAR-10/100 by the same formula

    .venv/bin/python bench/teacher_cache.py --batch_size 32 --epochs 12            # digits, CPU
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from kdpipe.cache import build_cache
from kdpipe.data import augmentation_of, load_data
from kdpipe.engine import Context, batch_bounds, seed_everything
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.common import frozen
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.options import resolve
from kdpipe.runner import select_device

from step_cost import time_task  # noqa: E402  (bench/ is the working directory's sibling)

SIZES = {"cifar10": (45000, 10), "cifar100": (45000, 100)}  # training images after a 5,000-image val split


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_name", default="digits")
    parser.add_argument("--img_root", default="data")
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--cuda", type=int, default=None)
    args = parser.parse_args()

    device = select_device(args.cuda)
    data = load_data(args.data_name, args.img_root)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-bench-"))
    teacher_path = tmp / "teacher.pt"
    torch.save(build_model(args.teacher, data.num_classes).state_dict(), teacher_path)
    common = dict(data_name=args.data_name, img_root=args.img_root, batch_size=args.batch_size, epochs=args.epochs)

    def context(entry, **opts):
        seed_everything(0)
        return Context(resolve(entry, {**common, **opts}), data, device, tmp)

    teacher = build_model(args.teacher, data.num_classes)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    cache_opts = dict(data_name=args.data_name, img_root=args.img_root, t_model=str(teacher_path), t_name=args.teacher)
    cache_ctx = Context(resolve("teacher_cache", cache_opts), data, device, tmp)  # as the teacher_cache node's
    teacher = frozen(cache_ctx.prepare(teacher))
    t0 = time.perf_counter()
    manifest = build_cache(
        teacher, teacher_path, data, tmp / "cache", device, channels_last=cache_ctx.channels_last, amp=cache_ctx.amp
    )
    build_seconds = time.perf_counter() - t0

    base_ctx = context("base", net_name=args.student)
    pair = dict(t_model=str(teacher_path), t_name=args.teacher, s_name=args.student, kd_mode="st")
    timings = {}
    for _ in range(2):  # interleave the three, twice, to even out a noisy machine
        timings.setdefault("plain", []).append(time_task(SupervisedTask(base_ctx), base_ctx, args.steps))
        live_ctx = context("kd", **pair)
        timings.setdefault("live", []).append(time_task(DistillTask(live_ctx), live_ctx, args.steps))
        cached_ctx = context("kd", teacher_cache=str(tmp / "cache"), **pair)
        timings.setdefault("cached", []).append(time_task(DistillTask(cached_ctx), cached_ctx, args.steps))
    plain, live, cached = (min(timings[k]) for k in ("plain", "live", "cached"))
    steps_per_epoch = len(batch_bounds(len(data.train_y), args.batch_size))
    plain_run = plain * steps_per_epoch * args.epochs

    views = augmentation_of(args.data_name).num_views
    print(
        f"device {device}, {args.data_name} {tuple(data.image_shape)}, {views} views/image, batch {args.batch_size}, "
        f"{args.teacher} -> {args.student}, {args.epochs} epochs"
    )
    print("| measure | value |")
    print("|---|---:|")
    print(f"| st-KD with cache / plain step | {cached / plain:.2f} |")
    print(f"| st-KD with live teacher / plain step | {live / plain:.2f} |")
    print(f"| cache build / one plain student run ({args.epochs} epochs) | {build_seconds / plain_run:.2f} |")
    print(f"| cache size, {args.data_name} (logits + embeddings, fp16) | {manifest['bytes'] / 1e6:.1f} MB |")
    dim = build_model(args.teacher, 10).embedding_dim
    for name, (n, k) in SIZES.items():
        v = augmentation_of(name).num_views
        print(f"| cache size, {name} (formula: N x views x (K + D) x 2 B) | {n * v * (k + dim) * 2 / 1e6:.0f} MB |")


if __name__ == "__main__":
    main()
