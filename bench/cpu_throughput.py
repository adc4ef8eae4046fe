"""CPU training throughput: the channels_last memory format against the contiguous (NCHW) one.

One process, synthetic CIFAR-10-shaped data (random uint8 3x32x32 images through kdpipe's own batched
augmentation and normalisation), each step exactly as ``fit`` runs it: plain training of the student,
and st-KD from a live (untrained) teacher.  ``old`` is ``--memory_format contiguous`` -- NCHW tensors,
kdpipe's CPU default (``auto``); ``new`` is ``--new`` (default ``channels_last``, opt-in on the CPU: its
results differ from NCHW's in the last bits, and it is refused for the w4 ResNets).  The two are timed in
alternation (old new, new old, ...) so that other jobs on a shared machine slow both alike; the table
gives the median images/s over rounds, and the ratio is the median of the rounds' paired ratios.

    .venv/bin/python bench/cpu_throughput.py --threads 2
    .venv/bin/python bench/cpu_throughput.py --threads 1 --teacher resnet56 --rounds 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import torch

from kdpipe.engine import Context, seed_everything
from kdpipe.methods.base import SupervisedTask
from kdpipe.methods.kd import DistillTask
from kdpipe.models import build_model
from kdpipe.options import resolve

from gpu import synthetic_cifar  # noqa: E402  (bench/ is the script's directory)
from step_cost import time_task  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument("--new", default="channels_last", help="the memory_format timed against contiguous")
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per variant and round")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--images", type=int, default=1280, help="synthetic training images")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    device = torch.device("cpu")
    data = synthetic_cifar(args.images, held_out=10)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-bench-"))
    teacher_path = tmp / "teacher.pt"
    torch.save(build_model(args.teacher, data.num_classes).state_dict(), teacher_path)
    common = dict(data_name="cifar10", batch_size=args.batch_size, epochs=2, cuda=0)
    cases = {
        f"plain {args.student}": ("base", SupervisedTask, dict(net_name=args.student)),
        f"st-KD {args.teacher} -> {args.student}, live teacher": (
            "kd",
            DistillTask,
            dict(t_model=str(teacher_path), t_name=args.teacher, s_name=args.student, kd_mode="st"),
        ),
    }
    layouts = {"old": "contiguous", "new": args.new}

    tasks = {}
    for label, (entry, task_cls, opts) in cases.items():
        for variant, memory_format in layouts.items():
            seed_everything(0)
            ctx = Context(resolve(entry, {**common, **opts, "memory_format": memory_format}), data, device, tmp)
            tasks[label, variant] = (task_cls(ctx), ctx)
    seconds = {key: [] for key in tasks}
    for r in range(args.rounds):
        for label in cases:
            order = ("old", "new") if r % 2 == 0 else ("new", "old")
            for variant in order:
                task, ctx = tasks[label, variant]
                seconds[label, variant].append(time_task(task, ctx, args.steps, warmup=1))

    print(
        f"CPU, {torch.get_num_threads()} threads, torch {torch.__version__}, synthetic CIFAR-10 3x32x32, "
        f"batch {args.batch_size}, {args.rounds} rounds x {args.steps} steps; "
        f"old: memory_format {layouts['old']}, new: memory_format {layouts['new']}"
    )
    print("| step | old img/s | new img/s | new ÷ old | new trained in |")
    print("|---|---:|---:|---:|---|")
    for label in cases:
        old, new = seconds[label, "old"], seconds[label, "new"]
        ratio = statistics.median(o / n for o, n in zip(old, new))
        rates = " | ".join(f"{args.batch_size / statistics.median(t):.0f}" for t in (old, new))
        layout = "channels_last" if tasks[label, "new"][1].channels_last else "contiguous"
        print(f"| {label} | {rates} | {ratio:.2f} | {layout} |")


if __name__ == "__main__":
    main()
