"""GPU throughput of kdpipe's training path on synthetic CIFAR-shaped data (run by bench/gpu.sh).

Sections (each prints a markdown table; all of it also goes to ``--out`` as markdown and JSON):

1. ``single``: images/s of one training run, ResNet-20/56/110 at batch 128 (batched augmentation
   included, channels_last + bf16): the step launched kernel by kernel (eager) and replayed as a
   CUDA graph (:mod:`kdpipe.capture`, kdpipe's default on CUDA).
2. ``fidelity``: every method (every kd mode, FT and its paraphraser, CRD, DML, BSS and born-again), trained
   2 epochs eagerly and with CUDA graphs from the same seed (synthetic data; a partial last batch each
   epoch): how each ran and how far apart the results are (``--methods`` picks cases); BSS's fixed-size
   attack, another computation on a graph, also beside an eager run with nudged initial weights.
3. ``jobs``: aggregate images/s of k training processes sharing the GPU (``jobs_per_gpu``), each
   replaying its graph, started together and timed over the same seconds.
4. ``streams``: k runs in one process, each graph replayed on its own CUDA stream.
5. ``stkd``: st-KD ResNet-110 -> ResNet-20 with the exact teacher cache and with the live teacher,
   relative to plain student training (both as kdpipe runs them).
6. ``seeds`` (not in the default list; bench/gpu_methods.sh runs it): CRD and BSS, whose steps draw random
   numbers, two seeds trained together (resources.seeds_together's path) and each alone: the same results
   (``--methods crd`` or ``bss`` for one).
7. ``amp`` (not in the default list; bench/gpu_amp.sh runs it): images/s of one run with bf16 autocast (kdpipe's
   CUDA default) and in float32 (``--amp off``, as the references train), eager and as CUDA graphs; and with
   ``cudnn.benchmark`` off, as kdpipe's training leaves it (every other section here turns it on).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.multiprocessing as mp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from kdpipe.cache import build_cache  # noqa: E402
from kdpipe.costplan import CALIBRATION  # noqa: E402
from kdpipe.capture import WARMUP_STEPS, StepRunner  # noqa: E402
from kdpipe.data import CIFAR10_MEAN, CIFAR10_STD, ImageData, Normalizer, augmentation_of, epoch_plan  # noqa: E402
from kdpipe.engine import Context, batch_bounds, fit, seed_everything  # noqa: E402
from kdpipe.losses import LOSSES  # noqa: E402
from kdpipe.methods.base import SupervisedTask  # noqa: E402
from kdpipe.methods.bss import BoundarySampleTask  # noqa: E402
from kdpipe.methods.crd import ContrastiveTask  # noqa: E402
from kdpipe.methods.dml import MutualTask  # noqa: E402
from kdpipe.methods.ft import FactorTransferTask, ParaphraserTask  # noqa: E402
from kdpipe.methods.common import frozen  # noqa: E402
from kdpipe.methods.kd import DistillTask  # noqa: E402
from kdpipe.models import build_model  # noqa: E402
from kdpipe.objectives.ft import Paraphraser  # noqa: E402
from kdpipe.options import resolve  # noqa: E402
from step_cost import time_task  # noqa: E402

BATCH = 128
NUDGE = 1e-7  # the fidelity section's nudge of an eager run's initial weights (BSS's noise floor)


def synthetic_cifar(n: int, held_out: int = 1000) -> ImageData:
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (n, 3, 32, 32), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (n,), generator=g)
    h = min(held_out, n)
    return ImageData(
        "synthetic-cifar10", 10, x, y, x[:h], y[:h], x[:h], y[:h], CIFAR10_MEAN, CIFAR10_STD, augmentation_of("cifar10")
    )


class Report:
    def __init__(self, out: Path | None):
        self.out, self.lines, self.data = out, [], {}

    def table(self, name: str, header: list[str], rows: list[list], note: str = "") -> None:
        lines = ["", f"### {name}" + (f" -- {note}" if note else ""), "| " + " | ".join(header) + " |"]
        lines.append("|" + "|".join("---" if i == 0 else "---:" for i in range(len(header))) + "|")
        lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
        print("\n".join(lines), flush=True)
        self.lines += lines
        self.data[name] = {"header": header, "rows": rows, "note": note}
        self.flush()

    def text(self, line: str) -> None:
        print(line, flush=True)
        self.lines.append(line)
        self.flush()

    def flush(self) -> None:
        if self.out:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "gpu.md").write_text("\n".join(self.lines) + "\n")
            (self.out / "gpu.json").write_text(json.dumps(self.data, indent=1))


def context(entry: str, data: ImageData, tmp: Path, graphs: bool = True, **opts) -> Context:
    seed_everything(0)
    common = dict(data_name="cifar10", batch_size=BATCH, epochs=200)
    return Context(resolve(entry, {**common, **opts}), data, torch.device("cuda"), tmp, cuda_graphs=graphs)


# ---------------------------------------------------------------- 1. one run


def single(report: Report, data: ImageData, tmp: Path, steps: int) -> dict:
    rows, rates = [], {}
    for net in ("resnet20", "resnet56", "resnet110"):
        n = steps if net == "resnet20" else max(20, steps // 3)
        best = {}
        for _ in range(2):
            for graphs in (False, True):
                ctx = context("base", data, tmp, graphs, net_name=net)
                seconds = time_task(SupervisedTask(ctx), ctx, n, graphs=graphs)
                best[graphs] = min(best.get(graphs, float("inf")), seconds)
        eager, graph = BATCH / best[False], BATCH / best[True]
        rates[net] = (eager, graph)
        rows.append([net, f"{eager:,.0f}", f"{graph:,.0f}", f"{graph / eager:.2f}"])
    report.table("single", ["net", "eager img/s", "CUDA graph img/s", "x"], rows, f"one run, batch {BATCH}")
    return rates


def amp(report: Report, data: ImageData, tmp: Path, steps: int) -> None:
    """Section ``amp``: what float32 (``--amp off``) costs against bf16 autocast, per net and step kind; and bf16
    with ``cudnn.benchmark`` off, as kdpipe's training leaves it (this script and calibrate.py turn it on)."""
    rows = []
    variants = (("auto", True), ("off", True), ("auto", False))  # (--amp, torch.backends.cudnn.benchmark)
    saved = torch.backends.cudnn.benchmark
    try:
        for net in ("resnet20", "resnet110"):
            n = steps if net == "resnet20" else max(20, steps // 3)
            for graphs in (False, True):
                best = {}
                for _ in range(2):
                    for setting, autotune in variants:
                        torch.backends.cudnn.benchmark = autotune
                        ctx = context("base", data, tmp, graphs, net_name=net, amp=setting)
                        seconds = time_task(SupervisedTask(ctx), ctx, n, graphs=graphs)
                        best[setting, autotune] = min(best.get((setting, autotune), float("inf")), seconds)
                bf16, fp32, plain = (BATCH / best[v] for v in variants)
                rows.append(
                    [net, "graph" if graphs else "eager", f"{bf16:,.0f}", f"{fp32:,.0f}", f"{fp32 / bf16:.2f}"]
                    + [f"{plain:,.0f}", f"{plain / bf16:.2f}"]
                )
    finally:
        torch.backends.cudnn.benchmark = saved
    report.table(
        "amp",
        ["net", "step", "bf16 img/s", "float32 img/s", "float32 / bf16", "bf16, no cudnn autotune img/s", "/ bf16"],
        rows,
        f"one run, batch {BATCH}, channels_last, cudnn.benchmark on unless said; TF32 as torch's defaults leave it",
    )


# ---------------------------------------------------------------- 2. fidelity


def fidelity(report: Report, tmp: Path, methods: str = "") -> None:
    """``methods``: a comma list of case labels, or of their first words (``bss``, ``kd``: every kd mode), to run."""
    data = synthetic_cifar(10 * BATCH + 64, held_out=500)  # 10 full batches and a partial one per epoch
    teacher_path = tmp / "teacher32.pt"
    torch.save(build_model("resnet32", 10).state_dict(), teacher_path)
    paraphraser_path = tmp / "paraphraser32.pt"
    channels = build_model("resnet32", 10).stage_channels[-1]  # FT's paraphraser reads the last stage
    torch.save(Paraphraser(channels, 0.5).state_dict(), paraphraser_path)
    cache_dir = tmp / "cache32"
    teacher = frozen(build_model("resnet32", 10)).cuda().to(memory_format=torch.channels_last)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    build_cache(teacher, teacher_path, data, cache_dir, torch.device("cuda"), channels_last=True, amp=True)
    pair = dict(t_model=str(teacher_path), t_name="resnet32", s_name="resnet20")
    cases = [("baseline", "base", SupervisedTask, dict(net_name="resnet20"))]
    cases += [(mode, "kd", DistillTask, dict(pair, kd_mode=mode)) for mode in LOSSES]
    cases += [("st, cache", "kd", DistillTask, dict(pair, kd_mode="st", teacher_cache=str(cache_dir)))]
    cases += [("dkd (warm-up 2)", "kd", DistillTask, dict(pair, kd_mode="dkd", warmup=2))]
    cases += [("st+dot", "kd", DistillTask, dict(pair, kd_mode="st", dot_delta=0.075))]
    # a fresh CE-phase optimizer after the init phase (repdistiller.yaml's features; separate here, which needs no
    # feature modules): its momentum buffers are made in the new key's eager first step, not recorded
    cases += [
        ("fsp-separate", "kd", DistillTask, dict(pair, kd_mode="fsp", init_epochs=1, init_optimizer="separate")),
        ("ab-features", "kd", DistillTask, dict(pair, kd_mode="ab", init_epochs=1, init_optimizer="features")),
    ]
    cases += [
        ("ft_paraphraser", "ft_paraphraser", ParaphraserTask, dict(t_model=str(teacher_path), t_name="resnet32")),
        ("ft", "ft", FactorTransferTask, dict(pair, paraphraser=str(paraphraser_path))),
        ("crd", "crd", ContrastiveTask, dict(pair)),
        ("crd+st", "crd", ContrastiveTask, dict(pair, st_weight=1.0)),
        ("dml", "dml", MutualTask, dict(peers=["resnet20", "resnet20"])),
        ("bss", "bss", BoundarySampleTask, dict(pair)),  # the fixed-size step; targets drawn from the softmax
        ("bss runner-up", "bss", BoundarySampleTask, dict(pair, attack_class="runner_up")),
        ("bss born-again", "bss", BoundarySampleTask, dict(pair, attack_size=0)),
    ]
    if methods:
        wanted = set(methods.split(","))
        cases = [c for c in cases if c[0] in wanted or c[0].split()[0] in wanted or c[1] in wanted]
    rows = []
    for label, entry, cls, opts in cases:
        # BSS's graph step attacks a fixed-size masked batch (not the eager step's computation): its distance is
        # set beside the eager run's own float-noise floor, an eager run whose initial weights were nudged
        nudged = entry == "bss" and opts.get("attack_size", 1) != 0
        try:
            out = {}
            for variant in ("eager", "graph") + (("nudged",) if nudged else ()):
                run_dir = Path(tempfile.mkdtemp(dir=tmp))
                ctx = context(entry, data, run_dir, variant == "graph", epochs=2, **opts)
                task = cls(ctx)
                role = next(iter(task.roles))
                if variant == "nudged":
                    with torch.no_grad():
                        for p in task.roles[role].parameters():
                            p.mul_(1 + NUDGE)
                t0 = time.perf_counter()
                result = fit(task, ctx, {})
                weights = torch.cat([p.detach().float().flatten() for p in task.roles[role].parameters()])
                out[variant] = (result, weights, time.perf_counter() - t0)
            (r0, w0, s0), (r1, w1, s1) = out["eager"], out["graph"]
            last0, last1 = r0.history[-1], r1.history[-1]
            rel = float((w1 - w0).abs().max() / w0.abs().max())
            floor = ""
            if nudged:
                r2, w2, _ = out["nudged"]
                floor = f"{float((w2 - w0).abs().max() / w0.abs().max()):.1e} ({r2.history[-1]['test_acc']:.1f})"
            rows.append(
                [
                    label,
                    r1.step_mode.replace("|", "/"),
                    f"{last0['train_loss']:.4f} / {last1['train_loss']:.4f}",
                    f"{last0['test_acc']:.1f} / {last1['test_acc']:.1f}",
                    f"{rel:.1e}",
                    floor,
                    f"{s0:.1f} / {s1:.1f}",
                ]
            )
        except Exception as exc:  # reported, not fatal
            rows.append([label, f"failed: {type(exc).__name__}: {str(exc)[:120]}", "", "", "", "", ""])
        print(rows[-1], flush=True)
    report.table(
        "fidelity",
        [
            "method",
            "graph run's steps",
            "train loss eager / graph",
            "test acc",
            "max |dw| / max |w|",
            f"eager vs eager, init x (1 + {NUDGE:g}) (its acc)",
            "s",
        ],
        rows,
        "resnet32 -> resnet20, 2 epochs of 1344 synthetic images (10 full batches + 64), same seed",
    )


# ---------------------------------------------------------------- 3. several processes


def _job(rank: int, net: str, graphs: bool, seconds: float, barrier, results) -> None:
    torch.backends.cudnn.benchmark = True
    tmp = Path(tempfile.mkdtemp(prefix=f"kdpipe-job{rank}-"))
    data = synthetic_cifar(8192)
    ctx = context("base", data, tmp, graphs, net_name=net, seed=rank)
    task = SupervisedTask(ctx)
    loop = _Loop(task, ctx)
    for _ in range(WARMUP_STEPS + 3):
        loop.step()
    torch.cuda.synchronize()
    barrier.wait()
    t0, done = time.perf_counter(), 0
    while time.perf_counter() - t0 < seconds:
        for _ in range(10):
            loop.step()
        done += 10
        torch.cuda.synchronize()
    results[rank] = (done * BATCH, time.perf_counter() - t0, loop.runner.mode)


class _Loop:
    """The engine's per-step path over an epoch plan, cycling through the full batches."""

    def __init__(self, task, ctx):
        data, device = ctx.data, ctx.device
        aug = data.augmentation
        normalize = Normalizer(data.mean, data.std, device, ctx.channels_last)
        padded, labels = aug.pad_images(data.train_x).to(device), data.train_y.to(device)
        self.plan = epoch_plan(ctx.opts["seed"], 0, len(labels), aug)
        self.order_dev, self.views_dev = self.plan.order.to(device), self.plan.view_ids.to(device)
        self.bounds = [b for b in batch_bounds(len(labels), BATCH) if b[1] - b[0] == BATCH]
        self.runner = StepRunner(task, lambda i, v: (normalize(aug.apply(padded[i], v)), labels[i]), BATCH)
        self.i = 0
        task.train(True)

    def step(self) -> None:
        lo, hi = self.bounds[self.i % len(self.bounds)]
        self.i += 1
        index = self.plan.order[lo:hi]
        self.runner(index, self.plan.view_ids[index], self.order_dev[lo:hi], self.views_dev, 0)


def jobs(report: Report, seconds: float, one_eager: dict) -> dict:
    """``one_eager``: net -> images/s of one eager run (section ``single``), the ratio's base."""
    ctx_mp = mp.get_context("spawn")
    rows, agg = [], {}
    for net, graphs, counts in (
        ("resnet20", True, (1, 2, 4, 8)),
        ("resnet20", False, (1, 4)),
        ("resnet110", True, (1, 2, 4)),
    ):
        for k in counts:
            manager = ctx_mp.Manager()
            results, barrier = manager.dict(), ctx_mp.Barrier(k)
            procs = [ctx_mp.Process(target=_job, args=(r, net, graphs, seconds, barrier, results)) for r in range(k)]
            for p in procs:
                p.start()
            for p in procs:
                p.join(timeout=120)
            finished = dict(results)
            manager.shutdown()
            if len(finished) < k:
                rows.append([net, "graph" if graphs else "eager", k, "failed", "", ""])
                continue
            total = sum(images / secs for images, secs, _ in finished.values())
            agg[net, graphs, k] = total
            modes = ",".join(sorted({m for _, _, m in finished.values()}))
            ratio = f"{total / one_eager[net]:.2f}" if net in one_eager else ""
            rows.append([net, modes, k, f"{total:,.0f}", f"{total / k:,.0f}", ratio])
            print(rows[-1], flush=True)
    report.table(
        "jobs",
        ["net", "steps", "processes", "aggregate img/s", "per process", "x one eager run"],
        rows,
        f"k training processes on one GPU, {seconds:.0f} s each, batch {BATCH}",
    )
    return agg


# ---------------------------------------------------------------- 4. streams


def streams(report: Report, data: ImageData, tmp: Path, steps: int) -> None:
    rows = []
    for net, counts in (("resnet20", (1, 2, 4, 8)), ("resnet110", (1, 2, 4))):
        one = None
        for k in counts:
            loops, side = [], [torch.cuda.Stream() for _ in range(k)]
            for r in range(k):
                ctx = context("base", data, tmp, True, net_name=net, seed=r)
                loops.append(_Loop(SupervisedTask(ctx), ctx))
            for loop, s in zip(loops, side):
                s.wait_stream(torch.cuda.current_stream())
                with torch.cuda.stream(s):
                    for _ in range(WARMUP_STEPS + 2):
                        loop.step()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            n = steps if net == "resnet20" else max(10, steps // 4)
            for _ in range(n):
                for loop, s in zip(loops, side):
                    with torch.cuda.stream(s):
                        loop.step()
            torch.cuda.synchronize()
            total = k * n * BATCH / (time.perf_counter() - t0)
            one = one or total
            rows.append([net, k, f"{total:,.0f}", f"{total / one:.2f}"])
            print(rows[-1], flush=True)
            del loops
            torch.cuda.empty_cache()
    report.table("streams", ["net", "runs in one process", "aggregate img/s", "x one run"], rows, "CUDA graphs")


# ---------------------------------------------------------------- 4b. runs trained together


def write_cifar10(root: Path, n_train: int, n_test: int) -> None:
    """Synthetic images in CIFAR-10's python layout (what --data_name cifar10 reads)."""
    import pickle

    import numpy as np

    rng = np.random.default_rng(0)
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    x = rng.integers(0, 256, (n_train + n_test, 3072), dtype=np.uint8)
    y = rng.integers(0, 10, n_train + n_test).tolist()
    per = n_train // 5
    for i in range(5):
        with open(folder / f"data_batch_{i + 1}", "wb") as fh:
            pickle.dump({"data": x[i * per : (i + 1) * per], "labels": y[i * per : (i + 1) * per]}, fh)
    with open(folder / "test_batch", "wb") as fh:
        pickle.dump({"data": x[n_train:], "labels": y[n_train:]}, fh)
    with open(folder / "batches.meta", "wb") as fh:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, fh)


def together(report: Report, tmp: Path, n_train: int = 10240, sizes=None, table: Path | None = None) -> None:
    """k seeds through kdpipe.runner.run_together (resources.seeds_together's path) vs one run alone:
    images/s of the last epoch summed over the runs, and whether seed 0's run is the same either way.
    The ratios go to the calibration ``table`` as ``together_x<k>`` rows (what the cost plan reads)."""
    import kdpipe
    from kdpipe.runner import run_together

    root = tmp / "cifar"
    write_cifar10(root, n_train, 1000)
    rows = []
    for net, epochs, counts in sizes or (("resnet20", 3, (1, 2, 4)), ("resnet110", 2, (1, 3))):
        seed0 = None
        for k in counts:
            save = tmp / f"together-{net}-{k}"
            opts = dict(data_name="cifar10", img_root=str(root), net_name=net, epochs=epochs, save_root=str(save))
            calls = [(lambda s=s: kdpipe.train_base(**opts, seed=s, note=f"seed{s}"), None) for s in range(k)]
            records = run_together(calls)
            rates = []
            for s in range(k):
                with open(save / f"seed{s}" / "metrics.csv") as fh:
                    last = fh.read().strip().splitlines()[-1].split(",")
                rates.append(float(last[-1]))
            curve = (save / "seed0" / "metrics.csv").read_text().splitlines()
            curve = [",".join(line.split(",")[:9]) for line in curve]
            seed0 = seed0 or curve
            rows.append(
                [net, k, f"{sum(rates):,.0f}", records[0]["step"], "yes" if curve == seed0 else "NO", len(records)]
            )
            print(rows[-1], flush=True)
            if k == 1:
                alone = sum(rates)
            elif table is not None:
                calibration_row(table, f"together_x{k}", net, sum(rates) / alone, "run_together / one run")
    report.table(
        "together",
        ["net", "runs in one process", "img/s (last epoch, summed)", "steps", "seed 0 as alone", "records"],
        rows,
        f"kdpipe.runner.run_together of train_base calls (seeds 0..k-1), {n_train} synthetic CIFAR-10 images "
        "(a tenth held out for validation)",
    )


def seeds(report: Report, tmp: Path, n_train: int = 1350, epochs: int = 2, methods: str = "") -> None:
    """CRD (negatives) and BSS (attack targets) draw random numbers in their steps: two seeds through
    kdpipe.runner.run_together (each on its own stream, where it also captures its graphs, with a CUDA
    generator state of its own, engine.OwnCudaGenerators) and each run alone, from the same seeds: the
    last epoch's loss and accuracy either way (1350 images, a tenth held out: 9 full batches of 128 and the
    eager last batch of 63, which draws from the run's own generator state on its own stream too), how far the
    weights are apart (cuDNN's deterministic
    algorithms here, so that only the runs' meeting could part them), and the seconds each way.  On
    2026-11-28 (H200, torch 2.11), before those two fixes, CRD's second seed ended 0.15 of its largest
    weight from its run alone; after them both methods' seeds are bit-identical either way."""
    import kdpipe
    from kdpipe.runner import run_together

    root = tmp / "cifar-seeds"
    write_cifar10(root, n_train, 500)
    teacher = tmp / "teacher-seeds.pt"
    torch.manual_seed(0)
    torch.save(build_model("resnet32", 10).state_dict(), teacher)
    common = dict(
        data_name="cifar10",
        img_root=str(root),
        epochs=epochs,
        t_model=str(teacher),
        t_name="resnet32",
        s_name="resnet20",
    )
    benchmark, deterministic = torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = False, True
    rows = []
    try:
        for label, function in (("crd", kdpipe.train_crd), ("bss", kdpipe.train_bss)):
            if methods and label not in methods.split(","):
                continue
            roots = {where: tmp / f"seeds-{label}-{where}" for where in ("alone", "together")}

            def calls(where: str, function=function, roots=roots):
                save = str(roots[where])
                return [(lambda s=s: function(**common, seed=s, save_root=save, note=f"seed{s}"), None) for s in (0, 1)]

            t0 = time.perf_counter()
            alone = [call() for call, _ in calls("alone")]
            t1 = time.perf_counter()
            joint = run_together(calls("together"))
            seconds = f"{t1 - t0:.0f} / {time.perf_counter() - t1:.0f}"
            for s in (0, 1):
                runs = [roots[w] / f"seed{s}" for w in ("alone", "together")]
                wa, wb = (_floats(torch.load(run / "model.pt", weights_only=True)) for run in runs)
                rel = max(float((wa[k] - wb[k]).abs().max()) for k in wa) / max(
                    float(v.abs().max()) for v in wa.values()
                )
                last = [(run / "metrics.csv").read_text().splitlines()[-1].split(",") for run in runs]
                rows.append(
                    [
                        label,
                        s,
                        f"{alone[s]['step']} / {joint[s]['step']}",
                        f"{float(last[0][3]):.4f} / {float(last[1][3]):.4f}",
                        f"{float(last[0][8]):.1f} / {float(last[1][8]):.1f}",
                        f"{rel:.1e}",
                        seconds,
                    ]
                )
                print(rows[-1], flush=True)
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = benchmark, deterministic
    report.table(
        "seeds",
        ["method", "seed", "steps alone / together", "train loss", "test acc", "max |dw| / max |w|", "s, both seeds"],
        rows,
        f"resnet32 -> resnet20, {epochs} epochs of {n_train} synthetic CIFAR-10 images, two seeds together and alone",
    )


def _floats(tree, prefix: str = "") -> dict:
    """Every floating-point tensor of a nested checkpoint, by its path of keys."""
    if isinstance(tree, torch.Tensor):
        return {prefix: tree.float()} if tree.is_floating_point() else {}
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in _floats(value, f"{prefix}/{key}").items()}
    return {}


def calibration_row(table: Path, quantity: str, subject: str, value: float, note: str) -> None:
    import datetime

    from calibrate import write
    from kdpipe.costplan import device_label

    name = torch.cuda.get_device_name()
    row = dict(
        device=device_label(name),
        quantity=quantity,
        subject=subject,
        value=f"{value:.4g}",
        image_size=32,
        batch=BATCH,
        source=f"bash bench/gpu.sh ({name}; {note})",
        date=datetime.date.today().isoformat(),
    )
    write(table, [row])


# ---------------------------------------------------------------- 5. st-KD


def stkd(report: Report, data: ImageData, tmp: Path, steps: int) -> None:
    teacher_path = tmp / "teacher.pt"
    torch.save(build_model("resnet110", 10).state_dict(), teacher_path)
    teacher = frozen(build_model("resnet110", 10)).cuda()
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    teacher = teacher.to(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    data = synthetic_cifar(4096)  # the cache is built for every (image, view): kept small
    manifest = build_cache(
        teacher, teacher_path, data, tmp / "cache", torch.device("cuda"), channels_last=True, amp=True
    )
    build = time.perf_counter() - t0
    pair = dict(t_model=str(teacher_path), t_name="resnet110", s_name="resnet20", kd_mode="st")
    best, modes = {}, {}
    for _ in range(2):
        for graphs in (True, False):
            for label, entry, opts, cls in (
                ("plain", "base", dict(net_name="resnet20"), SupervisedTask),
                ("live", "kd", pair, DistillTask),
                ("cached", "kd", dict(pair, teacher_cache=str(tmp / "cache")), DistillTask),
            ):
                ctx = context(entry, data, tmp, graphs, **opts)
                seconds = time_task(cls(ctx), ctx, steps, graphs=graphs)
                best[label, graphs] = min(best.get((label, graphs), float("inf")), seconds)
                modes[label, graphs] = time_task.last_mode
    rows = []
    for graphs in (False, True):
        plain = best["plain", graphs]
        rows.append(
            [
                "CUDA graph" if graphs else "eager",
                f"{BATCH / plain:,.0f}",
                f"{best['cached', graphs] / plain:.2f}",
                f"{best['live', graphs] / plain:.2f}",
                modes["cached", graphs],
            ]
        )
    report.table(
        "stkd",
        ["steps", "plain resnet20 img/s", "st-KD cached / plain", "st-KD live / plain", "cached run's steps"],
        rows,
        f"ResNet-110 -> ResNet-20; cache build {len(data.train_y)} images x 162 views: {build:.1f} s "
        f"({manifest['bytes'] / 1e6:.0f} MB)",
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--images", type=int, default=8192)
    parser.add_argument("--steps", type=int, default=120)
    parser.add_argument("--job_seconds", type=float, default=3.0)
    parser.add_argument("--only", default="fidelity,single,together,jobs,stkd,streams")
    parser.add_argument("--methods", default="", help="fidelity, seeds: a comma list of their cases (default: all)")
    parser.add_argument("--out", default=os.environ.get("OUT"))
    parser.add_argument(
        "--calibration",
        default=str(Path(os.environ["OUT"]) / "step_costs.csv" if os.environ.get("OUT") else ROOT / CALIBRATION),
        help="the calibration table the together section's rows go to",
    )
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench/gpu.py: torch sees no GPU")
    torch.backends.cudnn.benchmark = True
    report = Report(Path(args.out) if args.out else None)
    report.text(
        f"# {torch.cuda.get_device_name()}, torch {torch.__version__}, batch {BATCH}, synthetic CIFAR-10; "
        f"MPS control {'present' if shutil.which('nvidia-cuda-mps-control') else 'absent'}"
    )
    data = synthetic_cifar(args.images)
    tmp = Path(tempfile.mkdtemp(prefix="kdpipe-gpu-"))
    one_run: dict = {}
    sections = {
        "single": lambda: one_run.update(single(report, data, tmp, args.steps)),
        "fidelity": lambda: fidelity(report, tmp, args.methods),
        "jobs": lambda: jobs(report, args.job_seconds, {net: rates[0] for net, rates in one_run.items()}),
        "streams": lambda: streams(report, data, tmp, args.steps // 2),
        "stkd": lambda: stkd(report, data, tmp, args.steps // 2),
        "together": lambda: together(report, tmp, table=Path(args.calibration)),
        "seeds": lambda: seeds(report, tmp, methods=args.methods),
        "amp": lambda: amp(report, data, tmp, args.steps),
    }
    for name in args.only.split(","):
        t0 = time.perf_counter()
        try:
            sections[name]()
        except Exception as exc:  # one section's failure is reported; the others still run
            import traceback

            traceback.print_exc()
            report.text(f"\nsection {name} failed: {type(exc).__name__}: {exc}")
        report.text(f"\n({name}: {time.perf_counter() - t0:.0f} s)")


if __name__ == "__main__":
    main()
