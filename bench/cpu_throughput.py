"""CPU training throughput: memory format, host allocator and in-place activations against kdpipe's CPU default
before them.

Synthetic CIFAR-10-shaped data (random uint8 3x32x32 images through kdpipe's own batched augmentation and
normalisation), each step exactly as ``fit`` runs it: plain training of the student, and st-KD from a
live (untrained) teacher.  A variant is ``<memory_format>:<allocator>[:<activations>]``: ``contiguous`` (NCHW,
kdpipe's CPU default) or ``channels_last`` (``--memory_format channels_last``, opt-in on the CPU: its results
differ from NCHW's in the last bits); ``glibc`` (glibc's malloc defaults, ``KDPIPE_MALLOC_TUNING=0``) or
``kept`` (kdpipe's default since 2026-11-27, :mod:`kdpipe.hostmem`: freed memory kept for the next step;
results unchanged); ``in_place`` (the default since 2026-11-28, :mod:`kdpipe.models.inplace`: the networks'
ReLUs and residual sums written into fresh outputs; results unchanged) or ``copied`` (as before, each
allocated anew).  The first variant is the baseline.

The allocator is set once per process, so each variant runs in a process of its own: every round
starts one per variant, in a rotating order, so that other jobs on a shared machine slow all alike;
the table gives each variant's median images/s over the rounds and the median of the rounds' paired
ratios to the baseline.  ``--in_process``: variants of one allocator (layouts, activations) all train
in a single process instead, every round timing each in a rotating order, so the ratios are those of
steps one process runs side by side.

    .venv/bin/python bench/cpu_throughput.py --threads 2
    .venv/bin/python bench/cpu_throughput.py --variants contiguous:glibc:copied,channels_last:glibc:copied --rounds 5
    .venv/bin/python bench/cpu_throughput.py --in_process \
        --variants contiguous:kept:copied,contiguous:kept,channels_last:kept:copied,channels_last:kept
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LAYOUTS = ("contiguous", "channels_last")
ALLOCATORS = {"glibc": "0", "kept": "1"}  # -> KDPIPE_MALLOC_TUNING
ACTIVATIONS = ("in_place", "copied")


def variant(text: str) -> tuple[str, str, str]:
    parts = text.split(":")
    if len(parts) == 2:
        parts.append("in_place")
    if len(parts) != 3 or parts[0] not in LAYOUTS or parts[1] not in ALLOCATORS or parts[2] not in ACTIVATIONS:
        raise argparse.ArgumentTypeError(
            f"variant: got {text!r}; allowed: <{'|'.join(LAYOUTS)}>:<{'|'.join(ALLOCATORS)}>"
            f"[:<{'|'.join(ACTIVATIONS)}>]"
        )
    return tuple(parts)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads (default 2)")
    parser.add_argument(
        "--variants",
        type=lambda s: [variant(v) for v in s.split(",")],
        default="contiguous:glibc:copied,contiguous:kept,channels_last:kept",
        help="comma-separated <memory_format>:<allocator>[:<activations>], the baseline first",
    )
    parser.add_argument("--teacher", default="resnet110")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--batch_size", type=int, default=128)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per case, variant and round")
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--images", type=int, default=1280, help="synthetic training images")
    parser.add_argument(
        "--in_process", action="store_true", help="all variants (one allocator) in one process, interleaved"
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)  # a process's variants, comma-separated
    args = parser.parse_args()
    if args.child:
        return child(args, [variant(v) for v in args.child.split(",")])

    variants = args.variants
    if args.in_process and len({v[1] for v in variants}) > 1:
        parser.error("--in_process: the allocator is set once per process; give every variant the same one")
    seconds: dict[tuple, dict[str, list[float]]] = {v: {} for v in variants}
    common = [f"--{k}={getattr(args, k)}" for k in ("threads", "teacher", "student", "batch_size", "steps", "images")]

    def run(group: list[tuple], rounds: int) -> None:
        env = {**os.environ, "KDPIPE_MALLOC_TUNING": ALLOCATORS[group[0][1]]}
        child_args = [*common, f"--rounds={rounds}", f"--child={','.join(':'.join(v) for v in group)}"]
        out = subprocess.run([sys.executable, __file__, *child_args], env=env, capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr)
        for v, timed in zip(group, json.loads(out.stdout.splitlines()[-1])):
            for label, values in timed.items():
                seconds[v].setdefault(label, []).extend(values)

    if args.in_process:
        run(variants, args.rounds)
    else:
        for r in range(args.rounds):
            for i in range(len(variants)):
                run([variants[(i + r) % len(variants)]], 1)
            print(f"round {r + 1}/{args.rounds} done", file=sys.stderr, flush=True)

    import torch

    base = variants[0]
    print(
        f"CPU, {args.threads} threads, torch {torch.__version__}, synthetic CIFAR-10 3x32x32, batch {args.batch_size}, "
        f"{args.rounds} rounds x {args.steps} steps, "
        f"{'all in one process' if args.in_process else 'a process per variant and round'}; ÷: paired ratio to "
        f"{':'.join(base)}"
    )
    print("| step | " + " | ".join(f"{':'.join(v)} img/s | ÷" for v in variants) + " |")
    print("|---|" + "---:|---:|" * len(variants))
    for label in seconds[base]:
        cells = []
        for v in variants:
            rate = args.batch_size / statistics.median(seconds[v][label])
            ratio = statistics.median(b / t for b, t in zip(seconds[base][label], seconds[v][label]))
            cells.append(f"{rate:.0f} | {ratio:.2f}")
        print(f"| {label} | " + " | ".join(cells) + " |")


def child(args, variants: list[tuple]) -> None:
    """A process's variants (one allocator): builds both cases of each, then times every case of every variant
    once per round, the variants in a rotating order; prints [{case: [seconds per step, a round each]}, ...]."""
    import torch

    from kdpipe.engine import Context, seed_everything
    from kdpipe.hostmem import KEPT, keep_freed_memory
    from kdpipe.methods.base import SupervisedTask
    from kdpipe.methods.kd import DistillTask
    from kdpipe.models import build_model
    from kdpipe.models.inplace import out_of_place
    from kdpipe.options import resolve

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from gpu import synthetic_cifar
    from step_cost import time_task

    torch.set_num_threads(args.threads)
    data = synthetic_cifar(args.images, held_out=10)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-bench-"))
    teacher_path = tmp / "teacher.pt"
    torch.save(build_model(args.teacher, data.num_classes).state_dict(), teacher_path)
    cases = {
        f"plain {args.student}": ("base", SupervisedTask, dict(net_name=args.student)),
        f"st-KD {args.teacher} -> {args.student}, live teacher": (
            "kd",
            DistillTask,
            dict(t_model=str(teacher_path), t_name=args.teacher, s_name=args.student, kd_mode="st"),
        ),
    }
    built = []  # per variant: {case: (task, ctx)}
    for layout, allocator, _ in variants:
        common = dict(data_name="cifar10", batch_size=args.batch_size, epochs=2, cuda=0, memory_format=layout)
        tasks = {}
        for label, (entry, task_cls, opts) in cases.items():
            seed_everything(0)
            ctx = Context(resolve(entry, {**common, **opts}), data, torch.device("cpu"), tmp)
            assert ctx.channels_last == (layout == "channels_last")
            tasks[label] = task_cls(ctx), ctx
        built.append(tasks)
        assert (keep_freed_memory() == KEPT) == (allocator == "kept"), keep_freed_memory()
    timed = [{label: [] for label in cases} for _ in variants]
    for r in range(args.rounds):
        for i in range(len(variants)):
            k = (i + r) % len(variants)
            with out_of_place() if variants[k][2] == "copied" else contextlib.nullcontext():
                for label, (task, ctx) in built[k].items():
                    timed[k][label].append(time_task(task, ctx, args.steps, warmup=1))
    print(json.dumps(timed))


if __name__ == "__main__":
    main()
