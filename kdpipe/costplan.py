"""What a config's DAG will cost before it runs: every job, by rule, with estimated device-hours.

``python -m kdpipe plan --configfile config/paper.yaml [more.yaml ...] [--device h100|cpu]`` (``kdpipe.plan_cost``).

The jobs are the Snakefile's: the runs of :func:`kdpipe.plan.plan`, the nodes their rules take as
inputs (data manifests, teacher caches, FT paraphrasers: the same ``kdpipe.workflow`` functions the
rules call) and the report targets of rule ``all``, so the counts equal ``snakemake -n``'s "Job stats".

A training job's seconds are epochs x (train images x a step's seconds per image + validation and
test images x an inference forward's): its training steps plus per-epoch evaluation, not process start or
checkpoint writes (a run's ``train_time_s`` counts its training steps alone). A step's seconds per image
come from the measured calibration table ``kdpipe/reference/step_costs.csv`` (written by ``bench/calibrate.py``):

    step = S(student) + (student_step(method) - 1) x E + teacher_passes(method) x S(teacher)
    E = student_share(method) x S(student) + (1 - student_share(method)) x S(resnet20)

with S(net) = 1 / ``train_img_s`` of the net on the device, scaled by pixel count from the
calibration's image size to the dataset's; a student that reads the teacher cache pays no teacher
passes. ``student_step`` is measured with resnet20 students (for them, step = student_step x S(resnet20)
+ ...); ``student_share`` says how much of the method's cost beyond a plain step grows with the student
(measured on the CPU with a second student; a contrast memory's cost does not, a second backward through
the student does). Values the device lacks are estimated from the CPU rows and flagged: a net's throughput as
resnet20's on the device x the net's CPU step ratio, a method's ratios as measured on the CPU.
No value is scaled for settings the rows were not measured with (another batch size, ``resources.amp``,
``memory_format`` or ``threads``): the plan names each such setting under its table. The plan is the full
grid; it says how many of its jobs already have their outputs, but does not replay Snakemake's rerun logic.
Importing this module does not import torch (the config's checks do, when a plan is made).
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .errors import KdpipeError

CALIBRATION = Path(__file__).resolve().parent / "reference" / "step_costs.csv"
FIELDS = ("device", "quantity", "subject", "value", "image_size", "batch", "source", "date")
QUANTITIES = ("train_img_s", "infer_img_s", "student_step", "teacher_passes", "student_share", "together_x<k>")
EAGER = "-eager"  # a GPU's rows measured with --cuda_graphs 0 (bench/calibrate.py --graphs 0)
TOGETHER = re.compile(r"together_x([2-9]|[1-9]\d+)")  # k runs of a net trained together / one alone
REFERENCE_NET = "resnet20"  # the net every device measures, and the students of its method rows
CALIBRATION_TEACHER = "resnet110"  # the teacher of the method rows (bench/calibrate.py's default)
SHARE_FLOOR = 0.1  # a cost beyond a plain step under this many plain steps is not split: within a step's timing noise
ESTIMATE_FROM = "cpu"  # the device whose rows cover every net and method

# Built-in datasets: (training images before the validation split, test images), known without files.
# CIFAR's python batches; digits: scikit-learn's 1,797 images less kdpipe.data's 20 % test split.
SPLIT_SIZES = {"cifar10": (50_000, 10_000), "cifar100": (50_000, 10_000), "digits": (1_438, 359)}
IMAGE_SIZES = {"cifar10": 32, "cifar100": 32, "digits": 16}
# local rules: no device time
REPORT_RULES = ("summary", "tables", "group_plots", "cost_plot", "race", "sweep_tables", "sweep_plot", "all")


def device_label(name: str) -> str:
    """A device's short name in the table: ``NVIDIA H100 80GB HBM3`` -> ``h100``; ``cpu`` -> ``cpu``."""
    model = re.search(r"\b([A-Z]{1,2}\d{2,4}[A-Za-z]?)\b", name)
    return model.group(1).lower() if model else re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def student_share(own: float, other: float, ratio: float) -> float:
    """A method's ``student_share`` from its own cost (its step less the teacher's passes) measured with two
    students: ``own`` plain steps of REFERENCE_NET, ``other`` plain steps of a net whose plain step is ``ratio``
    times REFERENCE_NET's. The inverse of :meth:`Calibration.own_seconds`, clipped to [0, 1]; 1 (the extra
    cost scales with the student, as before the split) where it is under SHARE_FLOOR plain steps: a method's
    student_step varies by about 6 % between runs, so a smaller extra cost cannot be split."""
    extra = own - 1.0
    if extra < SHARE_FLOOR or ratio == 1.0:
        return 1.0
    return min(1.0, max(0.0, ((other - 1.0) * ratio / extra - 1.0) / (ratio - 1.0)))


def calibration_devices(path: str | Path | None = None) -> tuple[str, ...]:
    """The devices a calibration table has rows for (the ``--device`` choices)."""
    return tuple(dict.fromkeys(r["device"] for r in _read(Path(path or CALIBRATION))))


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        raise KdpipeError(f"calibration {path}: no such file")
    what = (
        f"calibration {path}: not a calibration table, a CSV file with columns {', '.join(FIELDS)} "
        "(as bench/calibrate.py writes it)"
    )
    try:
        with path.open(encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            rows, header = list(reader), reader.fieldnames or []
    except (UnicodeDecodeError, csv.Error) as exc:
        raise KdpipeError(f"{what}; reading it: {type(exc).__name__}") from None
    if set(FIELDS) - set(header):
        found = " ".join(", ".join(h for h in header if h).split())  # one line
        raise KdpipeError(f"{what}; its first line: {found[:60] + '...' if len(found) > 60 else found or 'empty'}")
    if not rows:
        raise KdpipeError(f"{what}; it has a header but no rows")
    for i, r in enumerate(rows, start=2):
        if set(FIELDS) - set(r) or not (r["quantity"] in QUANTITIES or TOGETHER.fullmatch(r["quantity"] or "")):
            raise KdpipeError(
                f"calibration {path}, line {i}: columns {', '.join(FIELDS)}; quantity one of {', '.join(QUANTITIES)}"
            )
        try:
            r["value"], r["image_size"], r["batch"] = float(r["value"]), int(r["image_size"]), int(r["batch"])
        except (TypeError, ValueError):  # a short row's missing cells are None
            raise KdpipeError(f"calibration {path}, line {i}: value, image_size and batch must be numbers") from None
    return rows


@dataclass
class Calibration:
    """Lookups in the calibration table for one device, each either measured or estimated (and then noted)."""

    device: str
    rows: dict = field(default_factory=dict)  # (device, quantity, subject) -> row
    estimates: dict = field(default_factory=dict)  # what -> how it was estimated (this calibration's own)
    eager: "Calibration | None" = None  # the same GPU's eager rows (<device>-eager), for steps that are not graphs
    used: set = field(default_factory=set)  # the keys of the rows a lookup read (shared with ``eager``)
    trained_at: dict = field(default_factory=dict)  # batch size -> the runs whose steps were costed from these rows

    @classmethod
    def load(cls, device: str, path: str | Path | None = None) -> "Calibration":
        rows = _read(Path(path or CALIBRATION))
        devices = tuple(dict.fromkeys(r["device"] for r in rows))
        if device not in devices:
            raise KdpipeError(f"device: got {device!r}; the calibration table has {', '.join(devices)}")
        by_key = {(r["device"], r["quantity"], r["subject"]): r for r in rows}
        cal = cls(device, by_key)
        if device + EAGER in devices:
            cal.eager = cls(device + EAGER, by_key, used=cal.used)
        return cal

    @property
    def calibrations(self) -> list["Calibration"]:
        """This device's calibration and its eager rows' (if any)."""
        return [self] + ([self.eager] if self.eager is not None else [])

    @property
    def graphs(self) -> bool:
        """Whether this device's rows are CUDA-graph steps: a GPU's graph rows come with its eager ones
        (``<gpu>-eager``; bench/gpu.sh writes both), so a GPU without them measured eager steps, as before
        CUDA graphs (the H100's rows)."""
        return self.eager is not None

    def _row(self, device: str, quantity: str, subject: str) -> dict | None:
        row = self.rows.get((device, quantity, subject))
        if row is not None:
            self.used.add((device, quantity, subject))
        return row

    def measured_batches(self) -> list[int]:
        """The batch sizes of this device's rows a lookup read for training steps (all but inference)."""
        return sorted({self.rows[k]["batch"] for k in self.used if k[0] == self.device and k[1] != "infer_img_s"})

    def threads(self) -> int | None:
        """The torch threads this device's rows were measured with, as bench/calibrate.py writes them into a
        row's source (``(1 thread)``, on the CPU); None where the rows read do not say."""
        found = {
            int(m.group(1))
            for k in self.used
            if k[0] == self.device and (m := re.search(r"\((\d+) threads?\)", self.rows[k]["source"]))
        }
        return found.pop() if len(found) == 1 else None

    def _need(self, device: str, quantity: str, subject: str) -> dict:
        row = self._row(device, quantity, subject)
        if row is None:
            raise KdpipeError(f"calibration: no {quantity} of {subject} on {device}; run bench/calibrate.py")
        return row

    def sources(self) -> list[str]:
        """(device date: source) of every row a lookup read: this device's, its eager rows' where steps were
        costed from them, the CPU's where something was estimated from them."""
        found = {(k[0], self.rows[k]["date"], self.rows[k]["source"].split(" (")[0]) for k in self.used}
        order = [c.device for c in self.calibrations]
        ordered = sorted(found, key=lambda f: (order.index(f[0]) if f[0] in order else len(order), f))
        return [f"{device} {date}: {source}" for device, date, source in ordered]

    def train_seconds(self, net: str, pixels: int) -> float:
        """Seconds per image of a plain training step of ``net`` at ``pixels`` x ``pixels``."""
        row = self._row(self.device, "train_img_s", net)
        if row is None:
            ref = self._need(self.device, "train_img_s", REFERENCE_NET)
            cpu_net, cpu_ref = (self._need(ESTIMATE_FROM, "train_img_s", n) for n in (net, REFERENCE_NET))
            ratio = (cpu_ref["value"] / cpu_ref["image_size"] ** 2) / (cpu_net["value"] / cpu_net["image_size"] ** 2)
            how = f"{REFERENCE_NET}'s {self.device} throughput x its {ESTIMATE_FROM} step ratio"
            self.estimates[f"net {net}"] = how
            return ratio / ref["value"] * (pixels / ref["image_size"]) ** 2
        return 1.0 / row["value"] * (pixels / row["image_size"]) ** 2

    def infer_seconds(self, net: str, pixels: int) -> float:
        """Seconds per image of an inference forward (evaluation in batches of 1000, teacher caches)."""
        row = self._row(self.device, "infer_img_s", net)
        if row is not None:
            return 1.0 / row["value"] * (pixels / row["image_size"]) ** 2
        measured = sorted(s for (d, q, s) in self.rows if d == self.device and q == "infer_img_s")
        if not measured:
            raise KdpipeError(f"calibration: no infer_img_s on {self.device}; run bench/calibrate.py")
        ref = REFERENCE_NET if REFERENCE_NET in measured else measured[0]
        ratio = self.infer_seconds(ref, pixels) / self.train_seconds(ref, pixels)
        self.estimates[f"inference of {net}"] = f"its training step x {ref}'s inference/training ratio"
        return self.train_seconds(net, pixels) * ratio

    def method(self, name: str) -> tuple[float, float]:
        """(student_step, teacher_passes) of a method (a kd mode, ``<mode>:init``, ft, crd, bss, dml, ...);
        a quantity the device lacks comes from the CPU rows (the teacher's share scaled as st's)."""
        values, estimated = [], False
        for quantity in ("student_step", "teacher_passes"):
            row = self._row(self.device, quantity, name)
            if row is None and self.device != ESTIMATE_FROM:
                row = self._row(ESTIMATE_FROM, quantity, name)
                scale = self._teacher_scale() if quantity == "teacher_passes" else 1.0
                estimated = estimated or row is not None
                values.append(None if row is None else row["value"] * scale)
            else:
                values.append(None if row is None else row["value"])
        if values == [None, None]:
            if name.startswith("+"):  # a factor on a variant (+dot)
                self.estimates[f"method {name}"] = "calibrated nowhere: no extra cost assumed"
                return 1.0, 0.0
            if name == "st":
                raise KdpipeError(f"calibration: no step cost of st on {self.device} or {ESTIMATE_FROM}")
            self.estimates[f"method {name}"] = "calibrated nowhere: costed as st"
            return self.method("st")
        if estimated:
            scale = self._teacher_scale()
            self.estimates[f"method {name}"] = f"{ESTIMATE_FROM} step ratios" + (
                f", teacher share x {scale:.2g} (st's {self.device} / {ESTIMATE_FROM})" if values[1] else ""
            )
        return values[0] or 0.0, values[1] or 0.0

    def own_seconds(self, name: str, own: float, net: str, pixels: int) -> float:
        """Seconds per image of method ``name``'s step less its teacher passes, for student ``net``, given the
        method's ``student_step`` ``own``: a plain step of ``net`` plus ``own - 1`` plain steps of REFERENCE_NET
        (the students it was measured with), of which the method's ``student_share`` scales with ``net``."""
        step = self.train_seconds(net, pixels)
        if net == REFERENCE_NET or own == 1.0:
            return own * step
        found = [  # this device's, then the CPU's; a method calibrated nowhere is costed as st
            (subject, device, row["value"])
            for subject in dict.fromkeys((name, "st"))
            for device in dict.fromkeys((self.device, ESTIMATE_FROM))
            if (row := self._row(device, "student_share", subject)) is not None
        ]
        if not found:
            share = 1.0
            how = "calibrated nowhere: its cost beyond a plain step scales with the student"
            self.estimates[f"student_share {name}"] = how
        else:
            subject, device, share = found[0]
            if subject != name:
                self.estimates[f"student_share {name}"] = f"st's ({device})"
            elif device != self.device:
                what = "how much of a method's cost beyond a plain step grows with the student"
                self.estimates["student_share"] = f"{ESTIMATE_FROM}'s: {what}"
        fixed = self.train_seconds(REFERENCE_NET, pixels)
        return step + (own - 1.0) * (share * step + (1.0 - share) * fixed)

    def together(self, net: str, runs: int) -> float:
        """How much faster ``runs`` runs of ``net`` train together in one process than one alone (images/s
        summed / one run's; rows ``together_x<k>``), interpolated between the measured k; 1 where unmeasured."""
        measured = {1: 1.0}
        for (device, quantity, subject), row in self.rows.items():
            m = TOGETHER.fullmatch(quantity)
            if device == self.device and subject == net and m:
                measured[int(m.group(1))] = row["value"]
                self.used.add((device, quantity, subject))
        if runs in measured:
            return measured[runs]
        if len(measured) == 1:
            self.estimates[f"{runs} runs of {net} together"] = "not measured: no gain assumed"
            return 1.0
        lower = max((k for k in measured if k < runs), default=1)
        upper = min((k for k in measured if k > runs), default=None)
        if upper is None:  # beyond the largest measured count: no further gain assumed
            self.estimates[f"{runs} runs of {net} together"] = f"as {lower} runs (the most measured)"
            return measured[lower]
        self.estimates[f"{runs} runs of {net} together"] = f"interpolated between {lower} and {upper} runs"
        share = (runs - lower) / (upper - lower)
        return measured[lower] + share * (measured[upper] - measured[lower])

    def _teacher_scale(self) -> float:
        here, cpu = self._row(self.device, "teacher_passes", "st"), self._row(ESTIMATE_FROM, "teacher_passes", "st")
        return here["value"] / cpu["value"] if here and cpu and cpu["value"] else 1.0


# ---------------------------------------------------------------- the DAG's jobs


@dataclass(frozen=True)
class Job:
    rule: str
    key: str  # what makes it one job of its rule (an output path, or the wildcards of a report rule)
    dataset: str = ""
    run: object = None  # the RunId of a training run
    net: str = ""  # the teacher of a cache or paraphraser
    seed: int = 0  # its teacher seed
    runs: tuple = ()  # <rule>_seeds (resources.seeds_together): the seeds' runs it trains together
    target: str = ""  # a report rule's first output

    def output(self) -> list[str]:
        """The files whose presence says the job has run: a run's ``run.json`` (each seed's, for <rule>_seeds),
        another job's first output; none for rule ``all``."""
        if self.runs or self.run is not None:
            return [f"{run.run_dir}/run.json" for run in self.runs or (self.run,)]
        if self.rule in REPORT_RULES:
            return [self.target] if self.target else []
        return [self.key]  # a data manifest, teacher cache or FT paraphraser: its first output


_REPORT_JOBS = (  # report target -> (rule, the part of the path that is one job): the rules' outputs
    (re.compile(r"results/summary\.csv"), "summary"),
    (re.compile(r"results/tables/sweeps/([^/]+)\.(md|csv)"), "sweep_tables"),
    (re.compile(r"results/tables/([^/]+)\.(md|csv|tex)"), "tables"),
    (re.compile(r"(results/plots/[^/]+/[^/]+/sweep-.+\.png)"), "sweep_plot"),
    (re.compile(r"results/plots/([^/]+)/cost\.png"), "cost_plot"),
    (re.compile(r"results/plots/([^/]+/[^/]+)/(test_acc|loss|final)\.png"), "group_plots"),
    (re.compile(r"(results/race/.+\.gif)"), "race"),
)


def dag_jobs(config: dict) -> list[Job]:
    """Every job of a fresh ``snakemake`` run of the config's default target (rule ``all``)."""
    from .plan import plan
    from .workflow import data_manifest_path, paraphraser_path, report_targets, seeds_job, student_inputs, teacher_seed

    jobs: dict[tuple[str, str], Job] = {}

    def add(job: Job) -> None:
        jobs.setdefault((job.rule, job.key), job)

    together: dict[tuple[str, str], list] = {}  # resources.seeds_together: (rule, job key) -> its seeds' runs
    for run in plan(config):
        add(Job("data_manifest", data_manifest_path(run.dataset), run.dataset))
        key = seeds_job(run) if config["resources"]["seeds_together"] else None
        if key:
            together.setdefault((f"{run.rule}_seeds", key), []).append(run)
        else:
            add(Job(run.rule, run.run_dir, run.dataset, run))
        if base_rule(run.rule) in ("train_kd", "train_crd"):
            cache = student_inputs(config, run.rule, run.dataset, run.method, run.teacher, run.seed).get("cache")
            if cache:
                add(Job("teacher_cache", cache, run.dataset, net=run.teacher, seed=teacher_seed(config, run.seed)))
        if base_rule(run.rule) == "train_ft":
            path = paraphraser_path(config, run.dataset, run.teacher, run.seed)
            add(Job("ft_paraphraser", path, run.dataset, net=run.teacher, seed=teacher_seed(config, run.seed)))
    for (rule, key), runs in together.items():
        add(Job(rule, key, runs[0].dataset, runs=tuple(runs)))
    for target in report_targets(config):
        for pattern, rule in _REPORT_JOBS:
            m = pattern.fullmatch(target)
            if m:
                add(Job(rule, m.group(1) if m.groups() else target, target=target))
                break
        else:
            raise KdpipeError(f"plan: report target {target} has no rule here; add it to costplan._REPORT_JOBS")
    add(Job("all", "all"))
    return list(jobs.values())


# ---------------------------------------------------------------- seconds per job


@dataclass(frozen=True)
class Split:
    train: int
    val: int
    test: int
    pixels: int
    views: int


def dataset_split(config: dict, dataset: str) -> Split | None:
    """Image counts of a dataset's splits as the config sets them; None for an image folder (unknown
    until its manifest is built)."""
    from .config import data_name
    from .data import augmentation_of

    name = data_name(config, dataset)
    if name not in SPLIT_SIZES:
        return None
    train, test = SPLIT_SIZES[name]
    val_size, subset = config["data"]["val_size"], config["data"]["train_subset"]
    val = int(round(val_size * train)) if val_size < 1 else int(val_size)  # kdpipe.data.split_train_val
    train -= val
    if subset:
        train = min(train, subset)
    return Split(train, val, test, IMAGE_SIZES[name], augmentation_of(name).num_views)


def job_seconds(config: dict, job: Job, cal: Calibration, split: Split) -> float:
    """Estimated device seconds of one job on the calibration's device."""
    from . import workflow as kw

    if job.rule in ("data_manifest", *REPORT_RULES):
        return 0.0
    px = split.pixels
    held_out = split.val + split.test

    def S(net):
        return cal.train_seconds(net, px)

    def I(net):  # noqa: E743
        return cal.infer_seconds(net, px)

    if cal.eager is not None and _eager_steps(config, job):
        return job_seconds(config, job, cal.eager, split)
    trained = _trained(config, job)
    if trained is not None and not job.runs:  # which rows a job's steps were costed from, at which batch
        cal.trained_at.setdefault(trained[1]["batch_size"], []).append(job.key)
    if job.rule == "teacher_cache":
        return split.train * split.views * I(job.net)
    if job.runs:  # <rule>_seeds: alone, over the gain of that many runs of its (first) net side by side
        alone = [job_seconds(config, Job(r.rule, r.run_dir, r.dataset, r), cal, split) for r in job.runs]
        first = job.runs[0]
        net = first.peers[0] if first.peers else first.student
        return sum(alone) / (cal.together(net, len(job.runs)) if _captured(config, first) else 1)
    if job.rule == "ft_paraphraser":
        opts = kw.ft_paraphraser_options(config, job.dataset, job.net, job.seed)
        _, passes = cal.method("ft_paraphraser")
        return opts["epochs"] * (split.train * passes * S(job.net) + held_out * I(job.net))
    run = job.run
    s = run.student
    if run.rule == "import_teacher":
        return held_out * I(s)
    opts = kw.run_options(config, run)
    if run.rule == "train_base":
        return opts["epochs"] * (split.train * S(s) + held_out * I(s))
    if run.rule == "train_dml":
        epochs = opts["epochs"]
        own, _ = cal.method("dml")
        return epochs * sum(split.train * own * S(p) + held_out * I(p) for p in run.peers)
    teacher = run.teacher
    if run.rule == "train_bss":
        from .objectives.bss import bss_lambda

        teacher = opts["t_name"]
        kind = "bss" if opts["attack_size"] else "born-again"
        own, passes = cal.method(kind)
        epochs = opts["epochs"]
        on = sum(bss_lambda(e, epochs, opts["lambda_kd"]) > 0 for e in range(1, epochs + 1))
        step = on * (cal.own_seconds(kind, own, s, px) + passes * S(teacher)) + (epochs - on) * S(s)
        return split.train * step + epochs * held_out * I(s) + split.test * I(teacher)
    rule = base_rule(run.rule)
    if rule == "train_ft":
        phases = [(opts["epochs"], "ft", False)]
    elif rule == "train_crd":
        phases = [(opts["epochs"], "crd", _cached(config, run))]
    elif rule == "train_kd":
        from .losses import LOSSES
        from .methods.kd import init_epochs_of

        phases = [(opts["epochs"], run.method, _cached(config, run))]
        if LOSSES[run.method].two_stage:
            phases.insert(0, (init_epochs_of(opts), f"{run.method}:init", False))
    else:
        raise KdpipeError(f"plan: no cost model for rule {run.rule}")
    dot = cal.method("+dot")[0] if opts.get("dot_delta") is not None else 1.0
    total = split.test * I(teacher)  # the teacher's accuracy, measured once
    for epochs, method, cached in phases:
        own, passes = cal.method(method)
        step = cal.own_seconds(method, own, s, px) * dot + (0.0 if cached else passes * S(teacher))
        total += epochs * (split.train * step + held_out * I(s))
    return total


def base_rule(rule: str) -> str:
    """The rule a sweep's node (``train_kd_sweep``, ...) runs the job of: its cost model's."""
    return rule.removesuffix("_sweep")


def _eager_steps(config: dict, job: Job) -> bool:
    """Whether a job's training steps run eagerly on a GPU (costed from its ``-eager`` rows): with
    ``resources.cuda_graphs: 0``, or for a run whose task does not replay its step with its options
    (``Task.replays``: DOT, a kd mode that syncs the host). A job that trains nothing (a teacher cache, an
    imported teacher) runs no graphs either way: never switched; a <rule>_seeds job leaves it to each run."""
    if job.runs:
        return False
    trained = _trained(config, job)
    return trained is not None and not _replays(config, *trained)


def _trained(config: dict, job: Job) -> tuple | None:
    """(the Task class, its options) of a job that trains (a run, an FT paraphraser; a <rule>_seeds job's first
    run's), None for one that trains nothing (a teacher cache, an imported teacher, a data manifest, a report)."""
    from .options import entry_task
    from .workflow import ft_paraphraser_options, run_options

    run = job.run if job.run is not None else job.runs[0] if job.runs else None
    if run is not None:
        task = _task(run.rule)
        return (task, run_options(config, run)) if task is not None else None
    if job.rule != "ft_paraphraser":  # the one node besides the runs that trains (entry point ft_paraphraser)
        return None
    return entry_task(job.rule), ft_paraphraser_options(config, job.dataset, job.net, job.seed)


def _replays(config: dict, task, opts: dict) -> bool:
    """Whether a task's steps are CUDA graphs with these options (on a GPU): not with resources.cuda_graphs 0."""
    return config["resources"]["cuda_graphs"] != 0 and task.replays(opts)


def _task(rule: str):
    """The Task class a training rule's runs train (its entry point's), None for a rule that trains nothing."""
    from .options import entry_task
    from .workflow import SEEDED_RULES

    spec = SEEDED_RULES.get(rule)  # every training rule of the plan, its sweep's included
    return entry_task(spec.entry) if spec else None


def _captured(config: dict, run) -> bool:
    """Whether a run's steps are CUDA graphs, so that its seeds train together (kdpipe.runner.run_together)."""
    from .workflow import run_options

    task = _task(run.rule)
    return task is not None and _replays(config, task, run_options(config, run))


def _cached(config: dict, run) -> bool:
    from .workflow import student_inputs

    return "cache" in student_inputs(config, run.rule, run.dataset, run.method, run.teacher, run.seed)


# ---------------------------------------------------------------- the entry point


def cost_plan(config: dict, device: str, calibration: str | Path | None = None, root: str | Path = ".") -> dict:
    """The plan of a validated config: jobs and device-hours by rule, the assumptions and the estimates, the
    settings the rows were not measured with, and how many jobs already have their outputs under ``root``
    (Snakemake's working directory)."""
    from .workflow import rule_runtime

    cal = Calibration.load(device, calibration)
    cpu = device_label("cpu")
    if device != cpu and config["resources"]["cuda"] == 0:
        raise KdpipeError(
            f"device: got {device!r}, a GPU, but config resources.cuda is 0: its jobs train on the CPU; "
            f"plan them with --device {cpu}"
        )
    rules: dict[str, dict] = {}
    unknown: dict[str, int] = {}
    done = {"jobs": 0, "hours": 0.0}
    splits = {d: dataset_split(config, d) for d in config["datasets"]}
    for job in dag_jobs(config):
        entry = rules.setdefault(job.rule, {"jobs": 0, "hours": 0.0, "longest_h": 0.0})
        entry["jobs"] += 1
        outputs = job.output()
        finished = bool(outputs) and all(Path(root, path).exists() for path in outputs)
        done["jobs"] += finished
        split = splits.get(job.dataset)
        if job.rule in ("data_manifest", *REPORT_RULES):
            continue
        entry["runtime_min"] = rule_runtime(job.rule)
        entry["resumes"] = _trained(config, job) is not None  # a killed training job resumes from its checkpoint
        if split is None:
            unknown[job.dataset] = unknown.get(job.dataset, 0) + 1
            continue
        hours = job_seconds(config, job, cal, split) / 3600
        entry["hours"] += hours
        entry["longest_h"] = max(entry["longest_h"], hours)
        done["hours"] += hours if finished else 0.0
    return {
        "device": device,
        "engine": _engine(config, cal),
        "rules": rules,
        "jobs": sum(r["jobs"] for r in rules.values()),
        "hours": sum(r["hours"] for r in rules.values()),
        "done": done,
        "images": {d: asdict(s) for d, s in splits.items() if s is not None},
        "measured_otherwise": measured_otherwise(config, cal),
        "sources": cal.sources(),
        "estimated": {c.device: dict(sorted(c.estimates.items())) for c in cal.calibrations if c.estimates},
        "unknown": unknown,
        "seeds_together": bool(config["resources"]["seeds_together"]),
    }


def _engine(config: dict, cal: Calibration) -> str:
    """What the device's rows measured, for the plan's first line."""
    if cal.device == device_label("cpu"):
        return "today's engine"
    if not cal.graphs:
        return "eager steps"
    if config["resources"]["cuda_graphs"] == 0:
        return "eager steps (resources.cuda_graphs: 0)"
    return "today's engine"


def measured_otherwise(config: dict, cal: Calibration) -> list[str]:
    """The config's settings that the rows its jobs were costed from were not measured with, one line each: the
    plan does not scale for them (no measurements to scale by). Call after the jobs were costed (the rows read
    and the batches trained are recorded then). bench/calibrate.py measures each device with kdpipe's defaults
    of memory_format and amp, at its batch (the rows' ``batch``), with ``--threads`` on the CPU (their source)."""
    from .options import find_option

    notes = []
    for c in cal.calibrations:
        measured = c.measured_batches()
        other = {batch: len(runs) for batch, runs in sorted(c.trained_at.items()) if batch not in measured}
        if measured and other:
            at = ", ".join(f"{batch} ({n} {'runs' if n > 1 else 'run'})" for batch, n in other.items())
            notes.append(
                f"batch: the {c.device} steps were measured at batch {', '.join(map(str, measured))}; this config "
                f"trains at batch {at}: per-image cost may differ (not scaled)"
            )
    resources, gpu = config["resources"], cal.device != device_label("cpu")

    def layout(value: str) -> str:  # as kdpipe.engine.Context resolves memory_format
        return "channels_last" if value == "channels_last" or (value == "auto" and gpu) else "contiguous (NCHW)"

    def autocast(value: str) -> str:  # as kdpipe.engine.Context resolves amp
        return "bf16 autocast" if gpu and value != "off" else "float32"

    for name, resolve in (("memory_format", layout), ("amp", autocast)):
        default, value = find_option("base", name).default, resources[name]
        if resolve(value) != resolve(default):
            notes.append(
                f"{name}: the {cal.device} rows measured {resolve(default)} steps (kdpipe's default there); "
                f"resources.{name} {value} trains {resolve(value)} steps: per-image cost may differ (not scaled)"
            )
    threads = cal.threads()
    if not gpu and threads is not None and resources["threads"] != threads:
        notes.append(
            f"threads: the {cal.device} rows are {threads}-thread steps and the hours here {threads}-thread hours; "
            f"resources.threads {resources['threads']}: a job's wall time may be shorter (not scaled)"
        )
    if not gpu and resources["cuda"] == 1:
        notes.append(f"cuda: resources.cuda 1 trains on a GPU, not the {cal.device}: plan it with --device <gpu>")
    if gpu:
        notes += gpu_sharing()
    return notes


def gpu_sharing() -> list[str]:
    """Jobs that share a GPU (``KDPIPE_JOBS_PER_GPU`` locally, a GPU share per SLURM job): the rows are one job's
    steps on a GPU of its own.  Jobs whose steps are CUDA graphs time-slice a shared GPU (README, "GPU throughput":
    8 processes shared one process's images/s), so each may take up to that many times longer."""
    from .cluster import GPUS_VAR, slurm_gpus
    from .errors import KdpipeError
    from .gpus import JOBS_PER_GPU_VAR, jobs_per_gpu

    try:
        local = jobs_per_gpu()
    except KdpipeError:  # said where the variable is used
        local = 1
    shared = [f"{JOBS_PER_GPU_VAR}={local}"] if local > 1 else []
    try:
        _, share = slurm_gpus()
    except ValueError:
        share = None
    if share:
        shared.append(f"{GPUS_VAR}={share}")
    if not shared:
        return []
    return [
        f"GPU sharing: {' and '.join(shared)} puts several jobs on one GPU; these hours and each job's time are for "
        'a GPU of its own, and jobs whose steps are CUDA graphs time-slice a shared one (README, "GPU throughput"), '
        "so each may take up to as many times longer as jobs share it, past its SLURM -t (not scaled)"
    ]


def _hours(hours: float) -> str:
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.1f}" if hours >= 1 else f"{hours:.2f}"


def over_time_limit(record: dict) -> dict[str, tuple[float, int]]:
    """The rules whose longest job is estimated to run past the time limit its SLURM job asks for:
    rule -> (its longest job's hours, the limit's minutes)."""
    return {
        rule: (r["longest_h"], r["runtime_min"])
        for rule, r in record["rules"].items()
        if r.get("runtime_min") and r["longest_h"] * 60 > r["runtime_min"]
    }


def format_plan(record: dict, configfile: str = "") -> str:
    unit = "CPU-hours" if record["device"] == device_label("cpu") else "GPU-hours"
    lines = [f"kdpipe plan{' of ' + configfile if configfile else ''} on {record['device']}, {record['engine']}"]
    lines.append(f"{'rule':<16}{'jobs':>6}{unit:>12}{'longest job':>13}{'SLURM -t':>10}")
    for rule, r in record["rules"].items():
        if rule in ("data_manifest", *REPORT_RULES):
            lines.append(f"{rule:<16}{r['jobs']:>6}{'local':>12}")
            continue
        limit = f"{r['runtime_min'] / 60:g} h" if r.get("runtime_min") else ""
        lines.append(f"{rule:<16}{r['jobs']:>6}{_hours(r['hours']):>12}{_hours(r['longest_h']) + ' h':>13}{limit:>10}")
    lines.append(f"{'total':<16}{record['jobs']:>6}{_hours(record['hours']):>12}")
    for rule, (hours, minutes) in over_time_limit(record).items():
        enough = math.ceil(hours * 1.25) * 60  # a quarter to spare, whole hours
        retried = (
            "resumes from its last epoch checkpoint"
            if record["rules"][rule].get("resumes")
            else "starts again from scratch, keeping no checkpoint,"
        )
        lines.append(
            f"over its time limit: {rule}'s longest job, {_hours(hours)} h, > the {minutes / 60:g} h its SLURM job "
            f"asks for: ask for more, --set-resources {rule}:runtime={enough} (a job killed at its limit {retried} "
            "when Snakemake retries it: profiles/slurm retries)"
        )
    images = ", ".join(
        f"{d} {s['train']:,} train + {s['val']:,} val + {s['test']:,} test images" for d, s in record["images"].items()
    )
    lines.append(
        f"assumes: one {record['device']} per job, its training steps plus per-epoch evaluation (not process start, "
        f"checkpoint writes); {images}"
    )
    done = record["done"]
    lines.append(
        f"the full grid: {done['jobs']} of its {record['jobs']} jobs already "
        f"{'has its' if done['jobs'] == 1 else 'have their'} outputs in this directory (a run's "
        f"run.json, another job's first output; {_hours(done['hours'])} {unit} of the total); `snakemake -n` "
        "lists what is left to run"
        if done["jobs"]
        else f"the full grid: none of its {record['jobs']} jobs has its outputs in this directory yet"
    )
    if record["seeds_together"]:
        lines.append("resources.seeds_together: the seeds of a run train together in one job (<rule>_seeds)")
    lines += [f"measured otherwise: {note}" for note in record["measured_otherwise"]]
    lines += [f"calibration {src}" for src in record["sources"]]
    for device, estimated in record["estimated"].items():
        lines.append(f"estimated (not measured on {device}):")
        lines += [f"  {what}: {how}" for what, how in estimated.items()]
    for dataset, n in record["unknown"].items():
        lines.append(f"not costed: {n} jobs of {dataset} (an image folder: its size is known once its manifest is)")
    return "\n".join(lines)


def method_table(device: str = ESTIMATE_FROM, calibration: str | Path | None = None, columns: int = 3) -> str:
    """Each method's training step with a live teacher as a multiple of a plain step of the same student, for
    the calibration's nets (CALIBRATION_TEACHER -> REFERENCE_NET) on ``device``: a markdown table (README's
    "Cost of each method"), derived from the table's student_step and teacher_passes rows."""
    rows = [r for r in _read(Path(calibration or CALIBRATION)) if r["device"] == device]
    value = {(r["quantity"], r["subject"]): r["value"] for r in rows}
    needed = [("train_img_s", REFERENCE_NET), ("train_img_s", CALIBRATION_TEACHER), ("student_step", "st")]
    if any(key not in value for key in needed):
        raise KdpipeError(f"calibration: no step costs of {CALIBRATION_TEACHER} and st on {device}")
    teacher = value[("train_img_s", REFERENCE_NET)] / value[("train_img_s", CALIBRATION_TEACHER)]  # S(t) / S(s)

    def live(name: str) -> float:
        return value[("student_step", name)] + value.get(("teacher_passes", name), 0.0) * teacher

    cells = []
    for name in dict.fromkeys(r["subject"] for r in rows if r["quantity"] == "student_step"):
        if name == "dml":
            cells.append((f"dml (2 × {REFERENCE_NET})", f"{2 * value[('student_step', name)]:.2f}"))
        elif name == "+dot":  # DOT's factor on a variant's own step: st's
            dot = value[("student_step", "st")] * (value[("student_step", name)] - 1)
            cells.append(("st+dot", f"{live('st') + dot:.2f}"))
        elif name == "bss":
            cells.append(("bss (attack epochs)", f"{live(name):.0f}"))
        elif ("student_step", f"{name}:init") in value:
            cells.append((name, f"{live(name):.2f} (init phase {live(name + ':init'):.2f})"))
        elif not name.endswith(":init"):
            cells.append((name, f"{live(name):.2f}"))
    cells.append(("st with the teacher cache", f"{value[('student_step', 'st')]:.2f}"))
    cells += [("", "")] * (-len(cells) % columns)
    lines = ["| " + " | ".join(["method | × plain"] * columns) + " |", "|" + "---|---:|" * columns]
    for i in range(0, len(cells), columns):
        lines.append("| " + " | ".join(f"{name} | {ratio}".strip() for name, ratio in cells[i : i + columns]) + " |")
    return "\n".join(lines)


def plan_cost(**kwargs) -> dict:
    """``python -m kdpipe plan``: the config's jobs by rule with estimated device-hours; the record has
    the table as ``table`` (which the command prints)."""
    from .config import load_config, read_config_file
    from .options import options_for, resolve

    allowed = sorted(opt.name for opt in options_for("plan"))
    unknown = sorted(set(kwargs) - set(allowed))
    if unknown:
        raise KdpipeError(f"plan: unknown option {unknown[0]!r}; allowed: {', '.join(allowed)}")
    opts = resolve("plan", kwargs)
    Calibration.load(opts["device"], opts["calibration"])  # an unknown device stops before the config's checks
    config: dict = {}
    for path in opts["configfile"]:
        config = merge_config(config, read_config_file(path))
    load_config(config)
    record = cost_plan(config, opts["device"], opts["calibration"])
    record["table"] = format_plan(record, " + ".join(opts["configfile"]))
    return record


def merge_config(base: dict, over: dict) -> dict:
    """``over``'s keys on top of ``base``'s, as Snakemake merges its --configfile files: a mapping in both is merged
    key by key, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        both = isinstance(value, dict) and isinstance(base.get(key), dict)
        out[key] = merge_config(base[key], value) if both else value
    return out
