"""How far bf16 autocast moves each kd mode's gradient from its float32 one (the references train in float32).

For every kd mode: a teacher trained briefly in float32; the student at initialisation and again after some
float32 training steps of the mode; on the same weights and batches, the gradient of the mode's distillation
terms and of the whole objective with respect to everything the step trains (student and helper modules),
once in float32 and once under bf16 autocast.  Printed per mode: the median over batches of the cosine between
the two gradients and of their relative error |g_bf16 - g_fp32| / |g_fp32|.  The ``ce`` row is cross-entropy
alone, the yardstick of what bf16 does to any gradient.  Each task is built as its entry point builds it; on
CUDA autocast is kdpipe's own (``Context.autocast``), on the CPU torch's CPU bf16 autocast (the same policy:
convolutions and matrix products in bf16).

    .venv/bin/python bench/amp_gradients.py                          # digits, CPU, every kd mode (~6 min)
    python3 bench/amp_gradients.py --cuda 1 --out "$OUT/amp.md"     # on a GPU
    .venv/bin/python bench/amp_gradients.py --only sobolev,irg,st
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # kdpipe from this checkout (a GPU machine: no install)

import kdpipe  # noqa: E402
from kdpipe.data import Normalizer, epoch_plan, load_data  # noqa: E402
from kdpipe.engine import Context, batch_bounds, seed_everything  # noqa: E402
from kdpipe.losses import LOSSES  # noqa: E402
from kdpipe.methods.kd import DistillTask  # noqa: E402
from kdpipe.methods.student import weighted_sum  # noqa: E402
from kdpipe.options import resolve  # noqa: E402
from kdpipe.runner import select_device  # noqa: E402


def flat_grad(loss: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    grads = torch.autograd.grad(loss, params, retain_graph=True, allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).reshape(-1).double() for g, p in zip(grads, params)])


def compare(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(cosine, relative error of ``b`` against ``a``); NaN where ``a`` is zero (nothing to compare)."""
    norm = a.norm()
    if norm == 0:
        return float("nan"), float("nan")
    return float(torch.dot(a, b) / (norm * b.norm()).clamp_min(1e-300)), float((b - a).norm() / norm)


class Probe:
    """One mode's task, its batches, and the two precisions of its step's gradients."""

    def __init__(self, ctx: Context, batches: list, epoch: int):
        self.ctx, self.batches, self.epoch = ctx, batches, epoch
        self.task = DistillTask(ctx)
        self.task.train(True)
        self.task.on_epoch_start(epoch)
        modules = [self.task.roles["student"], *self.task.extra_modules.values()]
        self.params = [p for m in modules for p in m.parameters() if p.requires_grad]

    def gradients(self, batch, bf16: bool) -> dict[str, torch.Tensor]:
        ctx = self.ctx
        ctx.amp = bf16
        seed_everything(0)  # the same random draws, if a mode makes any, in both precisions
        x, y, index, views = batch
        _, terms = self.task.terms(x, y, index, views, self.epoch)
        distill = [t for t in terms if t.name != "ce" and t.value.requires_grad]
        ce = [t for t in terms if t.name == "ce" and t.weight != 0]
        out = {"objective": flat_grad(weighted_sum(terms), self.params)}
        if distill:
            # at its own weight, or 1 where a schedule holds it at 0 this epoch (DKD's warm-up)
            distill = [t._replace(weight=t.weight or 1.0) for t in distill]
            out["distillation"] = flat_grad(weighted_sum(distill), self.params)
        if ce:
            out["ce"] = flat_grad(ce[0].value, self.params)
        ctx.amp = False
        return out

    def measure(self) -> dict[str, tuple[float, float]]:
        cosines: dict[str, list] = {}
        for batch in self.batches:
            fp32, bf16 = self.gradients(batch, False), self.gradients(batch, True)
            for key in fp32:
                cosines.setdefault(key, []).append(compare(fp32[key], bf16[key]))
        return {k: (statistics.median(c for c, _ in v), statistics.median(e for _, e in v)) for k, v in cosines.items()}

    def train(self, steps: int, batches: list) -> None:
        for i in range(steps):
            x, y, index, views = batches[i % len(batches)]
            self.task.train_step(x, y, index, views, self.epoch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_name", default="digits")
    parser.add_argument("--img_root", default="data")
    parser.add_argument("--teacher", default="resnet32")
    parser.add_argument("--student", default="resnet20")
    parser.add_argument("--teacher_epochs", type=int, default=15)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--batches", type=int, default=6, help="batches whose gradients are compared")
    parser.add_argument("--train_steps", type=int, default=60, help="float32 steps before the second comparison")
    parser.add_argument("--only", default="", help="comma list of kd modes (default: all)")
    parser.add_argument("--cuda", type=int, default=0)
    parser.add_argument("--out", default="", help="also write the table to this file")
    args = parser.parse_args()

    device = select_device(args.cuda)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-amp-"))
    common = dict(data_name=args.data_name, img_root=args.img_root, cuda=args.cuda, amp="off")
    kdpipe.train_base(
        net_name=args.teacher, epochs=args.teacher_epochs, batch_size=64, save_root=str(tmp), note="t", **common
    )
    teacher = str(tmp / "t" / "model.pt")
    data = load_data(args.data_name, args.img_root)

    aug = data.augmentation
    normalize = Normalizer(data.mean, data.std, device, device.type == "cuda")  # channels_last as on CUDA
    padded, labels = aug.pad_images(data.train_x).to(device), data.train_y.to(device)
    plan = epoch_plan(0, 0, len(labels), aug)
    batches = []
    for lo, hi in batch_bounds(len(labels), args.batch_size):
        if hi - lo == args.batch_size:
            index = plan.order[lo:hi].to(device)
            views = plan.view_ids[plan.order[lo:hi]].to(device)
            batches.append((normalize(aug.apply(padded[index], views)), labels[index], index, views))
    compared, training = batches[: args.batches], batches[args.batches :]

    wanted = [m for m in args.only.split(",") if m] or list(LOSSES)
    lines = [
        f"device {device}, {args.data_name}, {args.teacher} (trained {args.teacher_epochs} epochs, float32) -> "
        f"{args.student}, batch {args.batch_size}, median over {len(compared)} batches; torch {torch.__version__}",
        "",
        "| mode | part | cosine at init | rel. error at init | cosine after "
        f"{args.train_steps} steps | rel. error after |",
        "|---|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    shown_ce = False  # the yardstick's row, from the first mode whose objective has cross-entropy
    for mode in wanted:
        seed_everything(0)
        opts = resolve("kd", dict(common, t_model=teacher, t_name=args.teacher, s_name=args.student, kd_mode=mode))
        ctx = Context(opts, data, device, tmp, amp=False, cuda_graphs=False)
        if device.type == "cpu":  # Context.autocast is CUDA's
            ctx.autocast = lambda c=ctx: (
                torch.autocast("cpu", dtype=torch.bfloat16, cache_enabled=False) if c.amp else contextlib.nullcontext()
            )
        probe = Probe(ctx, compared, epoch=0)  # a two-stage mode's distillation is its init phase
        before = probe.measure()
        probe.train(args.train_steps, training)
        after = probe.measure()
        parts = ["distillation", "objective"] if shown_ce else ["ce", "distillation", "objective"]
        shown_ce = shown_ce or "ce" in before
        for part in parts:
            if part in before:
                label = "ce" if part == "ce" else mode
                shown = "" if part == "ce" else part
                (c0, e0), (c1, e1) = before[part], after[part]
                row = f"| {label} | {shown} | {c0:.3f} | {e0:.3f} | {c1:.3f} | {e1:.3f} |"
                lines.append(row)
                print(row, flush=True)
    if args.out:
        Path(args.out).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
