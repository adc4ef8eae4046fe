"""Measure the step costs behind ``python -m kdpipe plan`` and write them to kdpipe/reference/step_costs.csv.

One process, one device, the same data: the rows it measures replace theirs, every other row is kept.

* ``train_img_s`` (net): images/s of plain training (augmentation, forward, backward, SGD), as kdpipe
  trains on that device (channels_last + bf16 on CUDA).
* ``infer_img_s`` (net): images/s of an inference forward in batches of 1000 (evaluation, teacher caches).
* ``student_step`` (method): the method's step, less one teacher forward, / the plain student step.
* ``teacher_passes`` (method): the teacher's cost per step, in the teacher's plain training steps: its
  forward measured alone (0 after a two-stage mode's init phase; BSS: all its extra cost).
* ``student_share`` (method; CPU): how much of the method's own extra cost, ``student_step - 1`` plain steps
  of resnet20, grows with the student: the method timed again with a second student (``--share_student``,
  resnet56), 0 = a fixed cost (CRD's contrast memory), 1 = in proportion to the student's step (a second
  backward through it). Other devices use the CPU's.
  The plan costs a step as S(student) + (student_step - 1) * (share * S(student) + (1 - share) * S(resnet20))
  + teacher_passes * S(teacher), S = a plain step; for a resnet20 student: student_step * S(resnet20) + ....
  Each method is timed round-robin beside plain steps of the students and the teacher and the teacher's forward.
* ``dml``: a cohort's step / the sum of its peers' plain steps; ``ft_paraphraser``: a paraphraser step /
  the teacher's plain step; ``<mode>:init``: a two-stage mode's initialisation phase; ``bss``: an epoch
  that attacks; ``born-again``: ``attack_size 0`` (the teacher's soft targets only); ``+dot``: DOT's
  second backward, as a factor on the variant's ``student_step``.

    .venv/bin/python bench/calibrate.py --device cpu                       # digits 16x16, batch 32
    python bench/calibrate.py --device cuda                                # synthetic CIFAR, batch 128

The students are resnet20 (REFERENCE_NET, the net the plan scales a method's fixed cost from).

Nets are untrained (random weights); the ratios are what the plan uses, on one machine in one process.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kdpipe.costplan import (  # noqa: E402
    CALIBRATION,
    CALIBRATION_TEACHER,
    FIELDS,
    REFERENCE_NET,
    SHARE_FLOOR,
    device_label,
    student_share,
)
from kdpipe.data import Normalizer, load_data  # noqa: E402
from kdpipe.engine import Context, evaluate_model, seed_everything  # noqa: E402
from kdpipe.losses import LOSSES  # noqa: E402
from kdpipe.methods.base import SupervisedTask  # noqa: E402
from kdpipe.methods.bss import BoundarySampleTask  # noqa: E402
from kdpipe.methods.common import frozen  # noqa: E402
from kdpipe.methods.crd import ContrastiveTask  # noqa: E402
from kdpipe.methods.dml import MutualTask  # noqa: E402
from kdpipe.methods.ft import FactorTransferTask, ParaphraserTask  # noqa: E402
from kdpipe.methods.kd import DistillTask  # noqa: E402
from kdpipe.models import MODELS, build_model  # noqa: E402
from kdpipe.objectives.ft import Paraphraser  # noqa: E402
from kdpipe.options import resolve  # noqa: E402
from step_cost import time_task  # noqa: E402

DOT_DELTA = 0.075  # mdistiller's


def infer_seconds(name: str, ctx: Context, images: int, repeats: int = 2) -> float:
    """Seconds per image of an inference forward in batches of 1000 (the engine's evaluation)."""
    data = ctx.data
    model = ctx.prepare(build_model(name, data.num_classes))
    normalize = Normalizer(data.mean, data.std, ctx.device, ctx.channels_last)
    x, y = data.train_x[:images], data.train_y[:images]
    evaluate_model(model, ctx, x[:1000], y[:1000], normalize)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        evaluate_model(model, ctx, x, y, normalize)
        if ctx.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t0)
    return best / len(y)


class TeacherForward:
    """The frozen teacher's forward on a training batch, as a live-teacher student runs it, timed as a task."""

    def __init__(self, ctx: Context, net: str):
        self.ctx, self.model = ctx, frozen(ctx.prepare(build_model(net, ctx.data.num_classes)))

    optimizers: dict = {}

    def train(self, mode: bool = True) -> None:
        pass

    def on_epoch_start(self, epoch: int) -> None:
        pass

    def capture_key(self, epoch: int):
        return ()

    def train_step(self, x, y, index, view_ids, epoch):
        with torch.no_grad(), self.ctx.autocast():
            self.model(x)


def write(out: Path, rows: list[dict], stale: set = frozenset()) -> None:
    """The calibration table with ``rows`` in place of the rows they measure again, without the ``stale`` ones
    ((device, quantity, subject): a share of a method whose step was measured again without it); others kept."""
    kept = []
    if out.is_file():
        done = {(r["device"], r["quantity"], r["subject"]) for r in rows} | stale
        with out.open() as f:
            kept = [r for r in csv.DictReader(f) if (r["device"], r["quantity"], r["subject"]) not in done]
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(kept + rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=("cpu", "cuda"), required=True)
    parser.add_argument("--label", default=None, help="device name in the table (default: cpu, or the GPU's model)")
    parser.add_argument("--data", choices=("digits", "cifar"), default=None, help="default: digits (cpu), cifar (cuda)")
    parser.add_argument(
        "--share_student",
        default=None,
        help="a second student each method is timed with, for its student_share (default: resnet56 on cpu, "
        "none on cuda, where the plan uses the CPU's shares)",
    )
    parser.add_argument("--teacher", default=CALIBRATION_TEACHER)
    parser.add_argument("--nets", default="resnet20,resnet110", help="nets to measure; all, none")
    parser.add_argument("--batch_size", type=int, default=None, help="default: 32 on cpu, 128 on cuda")
    parser.add_argument("--steps", type=int, default=None, help="timed steps per case (default: 4 cpu, 20 cuda)")
    parser.add_argument("--repeats", type=int, default=3, help="each case is timed this often; the fastest counts")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU (1: least disturbed)")
    parser.add_argument("--only", default="", help="comma list of methods (default: all); nets are always measured")
    parser.add_argument(
        "--graphs", type=int, choices=(0, 1), default=1, help="CUDA: 1 = steps as CUDA graphs (the default)"
    )
    parser.add_argument("--out", default=str(CALIBRATION))
    args = parser.parse_args()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        sys.exit("calibrate: --device cuda, but torch sees no GPU")
    device = torch.device(args.device)
    share_name = args.share_student or ("none" if cuda else "resnet56")
    share_name = None if share_name == "none" else share_name
    if share_name == REFERENCE_NET:
        sys.exit(f"calibrate: --share_student must be another net than {REFERENCE_NET}, the students' net")
    label = args.label or device_label(torch.cuda.get_device_name() if cuda else "cpu")
    data_kind = args.data or ("cifar" if cuda else "digits")
    batch = args.batch_size or (128 if cuda else 32)
    steps = args.steps or (20 if cuda else 4)
    if not cuda:
        torch.set_num_threads(args.threads)
    warmup = 5 if cuda else 1
    torch.backends.cudnn.benchmark = True
    if data_kind == "cifar":
        from gpu import synthetic_cifar

        data, data_name = synthetic_cifar(10000), "cifar10"
    else:
        data, data_name = load_data("digits"), "digits"
    image_size = data.image_shape[-1]
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-calibrate-"))
    common = dict(data_name=data_name, batch_size=batch, epochs=200)

    def context(entry, **opts):
        seed_everything(0)
        return Context(resolve(entry, {**common, **opts}), data, device, tmp, cuda_graphs=bool(args.graphs))

    def fastest(task, ctx, epoch=0) -> float:
        """Seconds per image: the fastest of ``repeats`` timings (a shared machine only ever slows a run down)."""
        return min(time_task(task, ctx, steps, epoch, warmup=warmup) for _ in range(args.repeats)) / batch

    def timed(task_cls, ctx, epoch=0) -> float:
        return fastest(task_cls(ctx), ctx, epoch)

    rows, stale = [], set()
    argv = sys.argv[1:]
    if "--out" in argv:  # where the table was written is not how it was measured
        del argv[argv.index("--out") : argv.index("--out") + 2]
    command = "python bench/calibrate.py " + shlex.join(argv)
    if not cuda:
        command += f" ({args.threads} thread{'s' if args.threads > 1 else ''})"
    today = datetime.date.today().isoformat()

    def row(quantity, subject, value, note=""):
        rows.append(
            dict(
                device=label,
                quantity=quantity,
                subject=subject,
                value=f"{value:.4g}",
                image_size=image_size,
                batch=batch,
                source=command + (f" ({note})" if note else ""),
                date=today,
            )
        )
        print(f"{quantity:<15}{subject:<18}{value:>10.4g}  {note}", flush=True)
        write(Path(args.out), rows, stale)  # row by row: a run stopped early keeps what it measured

    nets = list(MODELS) if args.nets == "all" else [n for n in args.nets.split(",") if n and n != "none"]
    plain = {}
    for net in nets:
        ctx = context("base", net_name=net)
        plain[net] = timed(SupervisedTask, ctx)
        row("train_img_s", net, 1 / plain[net], f"channels_last + bf16, {time_task.last_mode} steps" if cuda else "")
        row("infer_img_s", net, 1 / infer_seconds(net, ctx, 4000 if cuda else 1000))

    wanted = {w for w in args.only.split(",") if w}
    s_name, t_name = REFERENCE_NET, args.teacher
    t_path = tmp / "teacher.pt"
    torch.save(build_model(t_name, data.num_classes).state_dict(), t_path)
    channels = build_model(t_name, data.num_classes).stage_channels[-1]
    torch.save(Paraphraser(channels, 0.5).state_dict(), tmp / "paraphraser.pt")
    pair = dict(t_model=str(t_path), t_name=t_name, s_name=s_name)

    # label -> (entry, task class, options, epoch to time: "main" = after a two-stage mode's init phase)
    half = 100  # an epoch of the 200 where BSS's weight is positive (it attacks)
    cases = {}
    for mode, loss in LOSSES.items():
        cases[mode] = ("kd", DistillTask, dict(pair, kd_mode=mode), "main")
        if loss.two_stage:
            cases[f"{mode}:init"] = ("kd", DistillTask, dict(pair, kd_mode=mode), 0)
    cases["st+dot"] = ("kd", DistillTask, dict(pair, kd_mode="st", dot_delta=DOT_DELTA), "main")
    cases["ft"] = ("ft", FactorTransferTask, dict(pair, paraphraser=str(tmp / "paraphraser.pt")), 0)
    cases["crd"] = ("crd", ContrastiveTask, pair, 0)
    cases["bss"] = ("bss", BoundarySampleTask, pair, half)
    cases["born-again"] = ("bss", BoundarySampleTask, dict(pair, attack_size=0), half)
    # each case is timed round-robin beside a plain step of the student, of the teacher, and the teacher's
    # forward alone, so that a shared machine's changing load falls on all four timings alike
    plain_tasks = {}
    for net in (s_name, t_name, share_name):
        if net is None:
            continue
        ctx = context("base", net_name=net)
        plain_tasks[net] = (SupervisedTask(ctx), ctx, 0)
    forward = (TeacherForward(plain_tasks[t_name][1], t_name), plain_tasks[t_name][1], 0)
    measured = {}
    for name, (entry, task_cls, opts, epoch) in cases.items():
        if wanted and name.split(":")[0] not in wanted:
            continue
        runs = {"student": plain_tasks[s_name], "teacher": plain_tasks[t_name], "forward": forward}
        students = {"method": s_name}
        # no share for BSS (its own cost is a plain step by definition) nor DOT (a factor on a variant's own cost)
        shared = share_name is not None and name not in ("bss", "st+dot")
        if shared:
            runs["other student"], students["method, other student"] = plain_tasks[share_name], share_name
        for key, student in students.items():
            ctx = context(entry, **dict(opts, s_name=student))
            task = task_cls(ctx)
            at = getattr(task, "init_epochs", 0) if epoch == "main" else epoch
            runs[key] = (task, ctx, at)
        best = {key: float("inf") for key in runs}
        for _ in range(args.repeats):
            for key, (timed_task, timed_ctx, timed_epoch) in runs.items():
                seconds = time_task(timed_task, timed_ctx, steps, timed_epoch, warmup=warmup)
                best[key] = min(best[key], seconds)
        teacher_free = epoch == "main" and getattr(task, "init_epochs", 0)  # after a two-stage mode's init

        def own_cost(method: str, student: str) -> float:
            """The method's step less one teacher forward, in plain steps of its student."""
            return max(0.0, (best[method] - (0.0 if teacher_free else best["forward"])) / best[student])

        if name == "bss":  # the attack's teacher passes are the whole extra cost
            own, passes = 1.0, (best["method"] - best["student"]) / best["teacher"]
        else:
            own, passes = own_cost("method", "student"), 0.0 if teacher_free else best["forward"] / best["teacher"]
        passes = max(0.0, passes)
        measured[name] = own
        if name == "st+dot":
            if measured.get("st"):
                row("student_step", "+dot", own / measured["st"], "DOT's factor on a variant's student_step")
            continue
        if not shared:  # an earlier share belongs to an earlier student_step
            stale.add((label, "student_share", name))
        row("student_step", name, own, f"{t_name} -> {s_name}")
        row("teacher_passes", name, passes, f"{t_name} -> {s_name}")
        if shared:
            other = own_cost("method, other student", "other student")
            ratio = best["other student"] / best["student"]
            share = student_share(own, other, ratio)
            note = f"{s_name}: {own:.3g}; {share_name}: {other:.3g} of its plain steps"
            if own - 1 < SHARE_FLOOR:
                note += f"; under the {SHARE_FLOOR:g} floor: not split"
            note += f" ({ratio:.3g} x {s_name}'s)"
            row("student_share", name, share, note)

    def beside(task_cls, ctx, net) -> float:
        """The task's step / a plain step of ``net``, timed round-robin."""
        runs = [(task_cls(ctx), ctx), plain_tasks[net][:2]]
        best = [float("inf")] * 2
        for _ in range(args.repeats):
            for i, (task, c) in enumerate(runs):
                best[i] = min(best[i], time_task(task, c, steps, 0, warmup=warmup))
        return best[0] / best[1]

    if not wanted or "dml" in wanted:
        ctx = context("dml", peers=[s_name, s_name])
        row("student_step", "dml", beside(MutualTask, ctx, s_name) / 2, f"{s_name} + {s_name}")
    if not wanted or "ft_paraphraser" in wanted:
        ctx = context("ft_paraphraser", t_model=str(t_path), t_name=t_name)
        row("teacher_passes", "ft_paraphraser", beside(ParaphraserTask, ctx, t_name), t_name)

    write(Path(args.out), rows, stale)
    print(f"wrote {len(rows)} rows for {label} to {args.out}")


if __name__ == "__main__":
    main()
