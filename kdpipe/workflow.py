"""The DAG's names for the Snakefile and rules (imported there as ``kw``): run directories,
inputs, each rule's ``params:`` and the report targets. Parsing the Snakefile imports this module,
so it stays light (no torch).

The other concerns live apart: config validation in :mod:`kdpipe.config`, the plan of runs
and their identities in :mod:`kdpipe.plan`, the teacher-cache policy in
:mod:`kdpipe.cache_policy`, and the in-job glue of ``scripts/*.py`` in :mod:`kdpipe.jobs`.

* :func:`base_options` and the other ``*_options`` build the slice of config one rule needs
  (its ``params:``), so a changed setting re-runs exactly the jobs that read it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable

from .cache_policy import cache_decision, cache_dir, cache_embeddings, cache_plan, reads_only_cached_taps  # noqa: F401 (rules)
from .config import (  # noqa: F401
    SCHEMA_PATH,
    apply_overrides,
    data_name,
    image_size,
    load_config,
    read_config_file,
    training,
)
from .errors import KdpipeError
from .options import (
    PARAPHRASER_EPOCHS,
    PARAPHRASER_REVISIONS,
    SECTION_SETTINGS,
    recorded_form,
    unless_default,
)
from .plan import (  # noqa: F401  (the DAG's names, used by the rules through `kw`)
    RESULTS,
    RunId,
    base_nets,
    bss_chains,
    cohort_name,
    crd_variants,
    kd_variants,
    pair_name,
    pair_of,
    plan,
    run_dir,
    runs_of,
    split_variant,
    sweep_dir,
    sweep_points,
    teacher_checkpoints,
    teacher_seed,
    uses_dot,
    SWEEP_KEY,
    SWEEP_SEGMENT,
)
from .report import RACES
from .report.reference import recipe_paths  # noqa: F401 (the summary rule's inputs)

ROOT = Path(__file__).resolve().parent.parent


# ---------------------------------------------------------------- DAG nodes


def base_runs(config: dict) -> list[str]:
    return runs_of(config, "train_base")


def kd_runs(config: dict) -> list[str]:
    """Every kd student's run directory, the sweeps' included."""
    return runs_of(config, "train_kd") + runs_of(config, "train_kd_sweep")


def ft_runs(config: dict) -> list[str]:
    return runs_of(config, "train_ft") + runs_of(config, "train_ft_sweep")


def crd_runs(config: dict) -> list[str]:
    return runs_of(config, "train_crd") + runs_of(config, "train_crd_sweep")


def dml_runs(config: dict) -> list[str]:
    return runs_of(config, "train_dml")


def bss_runs(config: dict) -> list[str]:
    return runs_of(config, "train_bss")


def chain_nets(config: dict, chain: str) -> tuple[str, str]:
    """(generation-0 teacher, student architecture) of a born-again chain, as the plan declares it."""
    for name, teacher, student in bss_chains(config):
        if name == chain:
            return teacher, student
    raise KdpipeError(f"bss chain {chain!r} is not in this config")


def teacher_model(config: dict, dataset: str, teacher: str, seed) -> str:
    """The teacher checkpoint a student of ``seed`` reads (an output of train_base)."""
    return f"{run_dir(dataset, 'base', teacher, teacher_seed(config, seed))}/model.pt"


def run_targets(config: dict) -> list[str]:
    """Every run directory the summary aggregates."""
    return [run.run_dir for run in plan(config)]


# ---------------------------------------------------------------- the data node


def data_manifest_path(dataset: str) -> str:
    """The dataset's node: every training rule takes it as input, so changed data re-runs its dependants."""
    return f"{RESULTS}/{dataset}/data/manifest.json"


def data_files(config: dict, dataset: str) -> list[str]:
    """The files a dataset is read from, where they exist (the data node's inputs; digits ship with
    scikit-learn and CIFAR may still be downloaded by the node itself)."""
    return files_of(data_name(config, dataset), config["data"]["img_root"])


def files_of(name: str, img_root: str) -> list[str]:
    """The files of data ``name`` (a ``--data_name``) that exist, with CIFAR's under ``img_root``."""
    from .data import IMAGE_SUFFIXES, cifar_files

    if name in ("cifar10", "cifar100"):
        files = [str(Path(img_root) / f) for f in cifar_files(name)]
    elif name.startswith("imagefolder:"):
        root = Path(name.split(":", 1)[1])
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    else:
        files = []
    return [f for f in files if Path(f).is_file()]


def files_stamp(files, content: bool = False) -> str:
    """A digest of data files: of each one's path, size and modification time (what a look at the directory
    sees), or with ``content`` of their bytes."""
    import hashlib

    digest = hashlib.sha256()
    for name in sorted(map(str, files)):
        if content:
            digest.update(f"{name}\0".encode())
            with open(name, "rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
        else:
            stat = Path(name).stat()
            digest.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]


def files_record_path(manifest: str | Path) -> Path:
    """Beside a data node's manifest, neither an input nor an output of any rule: the stamp and content digest
    of the files the manifest was made from (:func:`outdated_manifests`)."""
    return Path(manifest).parent / "files.json"


def outdated_manifests(config: dict) -> list[str]:
    """Make the data nodes again that Snakemake, comparing times, would keep: their files' content changed but
    none is newer than the manifest (replaced by ``cp -p``, ``rsync -a`` or an unpacked archive, which keep
    older times), so the manifest and the runs of the old data would stand.  The manifest's time is set back
    below its files' (its content stays), also in a dry run, which then shows what a run will make: the
    manifest, and the runs of its data after it.  Files whose times alone changed are recorded as they are now
    (``files.json``, which no rule reads), and nothing runs again.  Returns a line for each manifest set back."""
    import json
    import os

    lines = []
    for dataset in config["datasets"]:
        manifest, files = Path(data_manifest_path(dataset)), data_files(config, dataset)
        record_path = files_record_path(manifest)
        try:
            made = manifest.stat().st_mtime_ns
            text = record_path.read_text()
        except OSError:
            continue  # none yet (or an older kdpipe's manifest): Snakemake and each run's own check serve
        try:
            record = json.loads(text)
        except ValueError:
            record = None  # damaged: the files are taken as changed, and the data node writes a new record
        if not files:
            continue
        record, stamp = record if isinstance(record, dict) else {}, files_stamp(files)
        if record.get("stamp") == stamp:
            continue
        times = [Path(f).stat().st_mtime_ns for f in files]
        if max(times) > made:
            continue  # Snakemake sees this change itself (and the data node writes a new record)
        if record.get("content") == files_stamp(files, content=True):  # the same bytes with other times
            fresh = record_path.with_name(f".{record_path.name}.{os.getpid()}")
            fresh.write_text(json.dumps({**record, "stamp": stamp}, indent=2) + "\n")
            os.replace(fresh, record_path)
            continue
        older = max(1, min(times) - 10**9)  # a time Snakemake takes for one (0 it reads as none)
        os.utime(manifest, ns=(older, older))
        lines.append(
            f"the data files of {dataset} changed since {manifest} was made (their times are older than it): "
            "its time is set back below theirs, so that it is made again, and the runs of those data after it"
        )
    return lines


# ---------------------------------------------------------------- teacher cache


def student_inputs(config: dict, rule: str, dataset: str, method: str, teacher: str, seed) -> dict:
    """Inputs of a kd or crd student: data and teacher checkpoint, plus the teacher's cache files
    when the method reads only cached taps and the config's cache policy builds the cache."""
    inputs = {"data": data_manifest_path(dataset), "teacher": teacher_model(config, dataset, teacher, seed)}
    tseed = teacher_seed(config, seed)
    if reads_only_cached_taps(rule, method) and cache_decision(config, dataset, teacher, tseed)[0]:
        inputs["cache"] = f"{cache_dir(dataset, teacher, tseed)}/cache.pt"
        inputs["manifest"] = f"{cache_dir(dataset, teacher, tseed)}/manifest.json"
    return inputs


def cache_options(config: dict, dataset: str, teacher: str, tseed) -> dict:
    return {
        **data_options(config, dataset),
        "seed": int(tseed),
        "t_name": teacher,
        "cache_dtype": config["cache_dtype"],
        "embeddings": cache_embeddings(config, dataset, teacher, tseed),
        **precision(config),
    }


# ---------------------------------------------------------------- reports


def report_groups(config: dict) -> list[str]:
    """What plots and races compare: every pair, DML cohort and born-again chain, as '<teacher>-<student>'."""
    groups = []
    if kd_variants(config) or config["ft"]["enabled"] or config["crd"]["enabled"]:
        groups += [pair_name(p) for p in config["pairs"]]
    groups += [run.group for run in plan(config) if run.method in ("dml", "bss")]
    return list(dict.fromkeys(groups))


def summary_inputs(config: dict) -> list[str]:
    """run.json of every run; with report.partial only those that exist, so failures do not block it."""
    records = [f"{run}/run.json" for run in run_targets(config)]
    if config["report"]["partial"]:
        records = [r for r in records if Path(r).is_file()]
    return records


RUN_OUTPUTS = ("model.pt", "metrics.csv", "run.json")  # every training rule's outputs, in its run directory


def run_outputs(config: dict) -> list[str]:
    """Every output of every run (the default target): Snakemake re-makes only requested files, so a deleted
    ``model.pt`` or ``metrics.csv`` (which the plots and races read) of a finished run is made again only if
    named here; its job then rewrites them from the run's final checkpoint without training. With
    report.partial only the runs whose run.json exists, as :func:`summary_inputs`."""
    return [f"{record[: -len('run.json')]}{name}" for record in summary_inputs(config) for name in RUN_OUTPUTS]


def sweep_plots(config: dict, dataset: str) -> list[str]:
    """One plot per (pair, swept mode, swept key) of a dataset: accuracy against the key's values."""
    return list(
        dict.fromkeys(
            f"results/plots/{dataset}/{run.group}/sweep-{run.method}-{key}.png"
            for run in plan(config)
            if run.dataset == dataset and run.sweep
            for key, _ in run.sweep
        )
    )


def report_targets(config: dict) -> list[str]:
    targets = ["results/summary.csv"]
    for dataset in config["datasets"]:
        targets += [f"results/tables/{dataset}.md", f"results/tables/{dataset}.csv", f"results/tables/{dataset}.tex"]
        groups = report_groups(config)
        if groups:
            targets.append(f"results/plots/{dataset}/cost.png")
        for group in groups:
            targets += [f"results/plots/{dataset}/{group}/{kind}.png" for kind in ("test_acc", "loss", "final")]
            if config["report"]["races"]:
                targets += [f"results/race/{dataset}/{group}/{metric}.gif" for metric in RACES]
        plots = sweep_plots(config, dataset)
        if plots:  # only with kd.sweep: the sweeps' tables and plots
            targets += [f"results/tables/sweeps/{dataset}.md", f"results/tables/sweeps/{dataset}.csv", *plots]
    return targets


def paraphraser_path(config: dict, dataset: str, teacher: str, seed) -> str:
    """FT's paraphraser node of the teacher a student of ``seed`` reads."""
    return f"{run_dir(dataset, 'ft-paraphraser', teacher, teacher_seed(config, seed))}/paraphraser.pt"


def bss_teacher(config: dict, dataset: str, chain: str, seed, generation) -> str:
    """Generation g learns from generation g-1; generation 1 from the base model (gen0)."""
    generation = int(generation)
    if generation == 1:
        return teacher_model(config, dataset, chain_nets(config, chain)[0], seed)
    return f"{run_dir(dataset, 'bss', chain, seed)}/gen{generation - 1}/model.pt"


def teacher_nets(config: dict) -> list[str]:
    """Networks that teach someone in this config (their base runs are reported as teachers)."""
    return list(dict.fromkeys(pair["teacher"] for pair in config["pairs"]))


def training_gpu_request(config: dict, slurm: bool = False) -> tuple[int, str | None]:
    """The ``gpu`` and ``gres`` resources of every training rule.

    Locally: ``gpu`` 1 when training runs on CUDA here, else 0, and no ``gres``; ``--resources
    gpu=N`` counts GPUs, each holding ``KDPIPE_JOBS_PER_GPU`` jobs (:func:`kdpipe.gpus.pack_local_gpus`).
    Submitted to SLURM: what the job asks of the scheduler, independent of the login node's
    hardware: ``KDPIPE_SLURM_GPUS``, a GPU (1, the default), none (0) or a share of one GPU
    (``shard:N`` or ``mps:N``: ``gpu`` 0 and that ``gres``).  ``resources.cuda: 0`` means no GPU either way.
    """
    if config["resources"]["cuda"] == 0:
        return 0, None
    if slurm:
        from .cluster import slurm_gpus

        return slurm_gpus()
    import torch

    return (1 if torch.cuda.is_available() else 0), None


# ---------------------------------------------------------------- params


def data_options(config: dict, dataset: str) -> dict:
    """The options that say which images a run of ``dataset`` sees (the data node's params); ``crop_padding``
    only where it is not ``auto``, so that the runs planned before it existed keep their params (no re-run)."""
    padding = config["data"]["crop_padding"]
    return {
        "data_name": data_name(config, dataset),
        "img_root": config["data"]["img_root"],
        "download": config["data"]["download"],
        "val_size": config["data"]["val_size"],
        "split_seed": config["data"]["split_seed"],
        "train_subset": config["data"]["train_subset"],
        "image_size": image_size(config, dataset),
        **({"crop_padding": padding} if padding != "auto" else {}),
    }


def _common(config: dict, dataset: str, seed: int, stage: str, net: str | None) -> dict:
    """Data, seed, precision and the schedule of ``stage`` for a run that trains ``net`` (its ``by_net``
    overrides)."""
    return {**data_options(config, dataset), "seed": int(seed), **precision(config), **training(config, stage, net)}


def precision(config: dict) -> dict:
    """``amp`` where ``resources.amp`` is not ``auto``: it changes what a CUDA run computes (bf16 or float32),
    so a change re-runs the training jobs and teacher caches; absent at ``auto``, so that the runs planned
    before it was in their params keep their params (no re-run)."""
    return unless_default("base", amp=config["resources"]["amp"])


def base_options(config: dict, dataset: str, net: str, seed) -> dict:
    return {**_common(config, dataset, seed, "base", net), "net_name": net}


def imported_nets_pattern(config: dict) -> str:
    """Rule import_teacher's ``net`` constraint: the teacher networks this config imports (none: a
    pattern that matches nothing, so every base run is train_base's)."""
    nets = sorted(teacher_checkpoints(config))
    return "|".join(re.escape(net) for net in nets) if nets else "(?!)"


def teacher_checkpoint(config: dict, net: str) -> str:
    """The file an imported teacher network comes from (rule import_teacher's input)."""
    return teacher_checkpoints(config)[net]


def import_options(config: dict, dataset: str, net: str, seed) -> dict:
    return {**data_options(config, dataset), "seed": int(seed), "net_name": net, **precision(config)}


def _ft_shape(config: dict) -> dict:
    return {
        "ft_bn": config["ft"]["bn"],
        "para_decoder_out": config["ft"]["paraphraser_decoder_out"],
        **unless_default("ft", ft_init=config["ft"]["init"]),
    }


def ft_paraphraser_options(config: dict, dataset: str, teacher: str, seed) -> dict:
    """KD-Zoo's paraphraser recipe: 30 epochs at a constant lr of the students' lr / 10, no Nesterov."""
    ft = config["ft"]
    opts = {**_common(config, dataset, seed, "ft", None), "t_name": teacher, "k": ft["k"], **_ft_shape(config)}
    if ft["paraphraser_epochs"] == "scaled":
        opts["epochs"] = max(1, round(0.15 * opts["epochs"]))
    else:
        opts["epochs"] = ft["paraphraser_epochs"] or PARAPHRASER_EPOCHS  # the options' default
    opts["lr"] = ft["paraphraser_lr_by_teacher"].get(teacher) or ft["paraphraser_lr"] or opts["lr"] / 10
    opts["milestones"] = None  # a constant lr
    opts["warmup_epochs"] = 0
    opts["form"] = recorded_form(PARAPHRASER_REVISIONS)  # a paraphraser of an earlier revision is re-planned
    return opts


def ft_options(config: dict, dataset: str, teacher: str, student: str, seed, sweep=()) -> dict:
    """Options of one FT student; a run of ``ft.sweep`` has its point's values on top."""
    return {
        **_common(config, dataset, seed, "ft", student),
        "t_name": teacher,
        "s_name": student,
        **{k: config["ft"][k] for k in SECTION_SETTINGS["ft"]},
        "k": config["ft"]["k"],
        **_ft_shape(config),
        **unless_default("ft", factor_form=config["ft"]["factor_form"]),
        **dict(sweep),
    }


def crd_options(config: dict, dataset: str, variant: str, teacher: str, student: str, seed, sweep=()) -> dict:
    """Options of one CRD student; a run of ``crd.sweep`` has its point's values on top."""
    c = config["crd"]
    opts = {**_common(config, dataset, seed, "crd", student), "t_name": teacher, "s_name": student}
    opts.update({k: c[k] for k in SECTION_SETTINGS["crd"]})
    if variant.endswith("+st"):
        opts["st_weight"] = c["st_weight"]
    opts.update(dict(sweep))
    return opts


def dml_options(config: dict, dataset: str, cohort: str, seed) -> dict:
    peers = cohort.split("-")
    return {
        **_common(config, dataset, seed, "dml", peers[0]),  # the config refuses peers of different schedules
        "peers": peers,
        "lambda_kd": config["dml"]["lambda_kd"],
    }


def bss_options(config: dict, dataset: str, chain: str, seed, generation) -> dict:
    b = config["bss"]
    teacher, student = chain_nets(config, chain)
    generation = int(generation)
    return {
        **_common(config, dataset, seed, "bss", student),
        "t_name": teacher if generation == 1 else student,
        "s_name": student,
        "generation": generation,
        **{k: b[k] for k in ("lambda_kd", "T", "attack_size", "attack_class", "attack_clamp")},
    }


def kd_options(config: dict, dataset: str, variant: str, teacher: str, student: str, seed, sweep=()) -> dict:
    """Options of one kd student: the student's schedule plus only this mode's settings (``kd.settings``,
    then the pair's own ``settings``), then the values of its ``sweep`` point (a run of ``kd.sweep``):
    a sweep's runs differ from the mode's own run, and from each other, by their point alone."""
    from .losses import LOSSES

    mode, with_st = split_variant(variant)
    opts = {**_common(config, dataset, seed, "kd", student), "kd_mode": mode, "t_name": teacher, "s_name": student}
    form = LOSSES[mode].recorded_form()
    if form is not None:  # a revised mode's runs of an earlier revision are re-planned
        opts["form"] = form
    opts.update(config["kd"]["settings"].get(mode, {}))
    opts.update(pair_of(config, teacher, student).get("settings", {}).get(mode, {}))
    if with_st:
        opts["st_weight"] = config["kd"]["st_weight"]
    if uses_dot(variant):
        opts["dot_delta"] = config["kd"]["dot_delta"]
    opts.update(dict(sweep))
    return opts


def sweep_point(config: dict, variant: str, segment: str, section: str = "kd") -> tuple:
    """The point of ``variant``'s sweep (:func:`kdpipe.plan.sweep_points`) whose run directories have
    ``segment`` (a lookup in the plan's grid, not a parse)."""
    for point in sweep_points(config, variant, section):
        if sweep_dir(point) == segment:
            return point
    where = f"kd.sweep.{variant}" if section == "kd" else f"{section}.sweep"
    raise KdpipeError(f"{segment} is not a point of {where} in this config")


def run_options(config: dict, run: RunId) -> dict:
    """A planned run's options, as its rule's ``params:`` give them (the cost plan's view of a job): the
    rule's own options (:data:`SEEDED_RULES`) of the wildcards its run directory has."""
    if run.rule == "import_teacher":
        return import_options(config, run.dataset, run.student, run.seed)
    if run.rule not in SEEDED_RULES:
        raise KdpipeError(f"{run.rule} has no options here")
    return SEEDED_RULES[run.rule].options(config, run_wildcards(run), run.seed)


@dataclass(frozen=True)
class RunWildcards:
    """The wildcards of a planned run's directory (those of every training rule's output patterns;
    a rule reads its own): what Snakemake would hand the rule's job."""

    dataset: str
    net: str  # train_base
    variant: str  # train_kd: the mode and its variant (``at+st``)
    crd: str  # train_crd: ``crd`` or ``crd+st``
    teacher: str
    student: str
    cohort: str  # train_dml: the peers, '-'-joined
    chain: str  # train_bss: the chain's directory name
    gen: int | None
    sweep: str  # a sweep node's segment (``T~8``)


def run_wildcards(run: RunId) -> RunWildcards:
    variant = run.method + run.variant
    return RunWildcards(
        dataset=run.dataset,
        net=run.student,
        variant=variant,
        crd=variant,
        teacher=run.teacher,
        student=run.student,
        cohort=cohort_name(list(run.peers)),
        chain=Path(run.run_dir).parts[-3] if run.generation is not None else "",  # .../{chain}/seed<s>/gen<g>
        gen=run.generation,
        sweep=sweep_dir(run.sweep),
    )


# ---------------------------------------------------------------- training jobs: one seed, or every seed together


@dataclass(frozen=True)
class SeededRule:
    """A training rule whose job trains one seed's run (wildcard ``seed``), declared once for its own
    rule and for ``<name>_seeds`` (``resources.seeds_together``, rules/seeds.smk), which trains every
    seed's run of the same other wildcards in one job.  ``inputs``/``options``: (config, wildcards, seed)
    -> the job's input files / options for that seed (``options`` also takes a sweep point)."""

    entry: str  # the kdpipe entry point (kdpipe.options.ENTRIES)
    inputs: Callable[..., dict]
    options: Callable[..., dict]
    teacher_cache: bool = False  # its teacher may be read from a teacher cache (the job logs which and why)
    # (config, wildcards) -> the sweep point of the rule's ``<name>_sweep`` node (a run of kd.sweep, ft.sweep,
    # crd.sweep: its wildcard ``sweep``); None: the rule has no sweep
    sweep: Callable[..., tuple] | None = None

    def swept(self) -> "SeededRule":
        """The rule of its sweep's nodes: the same job, with the point's values on top of the options."""
        sweep, options = self.sweep, self.options
        return replace(self, options=lambda c, w, s: options(c, w, s, sweep(c, w)), sweep=None)


SEEDED_RULES: dict[str, SeededRule] = {
    "train_base": SeededRule(
        "base",
        lambda c, w, s: {"data": data_manifest_path(w.dataset)},
        lambda c, w, s: base_options(c, w.dataset, w.net, s),
    ),
    "train_kd": SeededRule(
        "kd",
        lambda c, w, s: student_inputs(c, "train_kd", w.dataset, split_variant(w.variant)[0], w.teacher, s),
        lambda c, w, s, sweep=(): kd_options(c, w.dataset, w.variant, w.teacher, w.student, s, sweep),
        teacher_cache=True,
        sweep=lambda c, w: sweep_point(c, w.variant, w.sweep),
    ),
    "train_ft": SeededRule(
        "ft",
        lambda c, w, s: {
            "data": data_manifest_path(w.dataset),
            "teacher": teacher_model(c, w.dataset, w.teacher, s),
            "paraphraser": paraphraser_path(c, w.dataset, w.teacher, s),
        },
        lambda c, w, s, sweep=(): ft_options(c, w.dataset, w.teacher, w.student, s, sweep),
        sweep=lambda c, w: sweep_point(c, "ft", w.sweep, "ft"),
    ),
    "train_crd": SeededRule(
        "crd",
        lambda c, w, s: student_inputs(c, "train_crd", w.dataset, "crd", w.teacher, s),
        lambda c, w, s, sweep=(): crd_options(c, w.dataset, w.crd, w.teacher, w.student, s, sweep),
        teacher_cache=True,
        sweep=lambda c, w: sweep_point(c, w.crd, w.sweep, "crd"),
    ),
    "train_dml": SeededRule(
        "dml",
        lambda c, w, s: {"data": data_manifest_path(w.dataset)},
        lambda c, w, s: dml_options(c, w.dataset, w.cohort, s),
    ),
    "train_bss": SeededRule(
        "bss",
        lambda c, w, s: {
            "data": data_manifest_path(w.dataset),
            "teacher": bss_teacher(c, w.dataset, w.chain, s, w.gen),
        },
        lambda c, w, s: bss_options(c, w.dataset, w.chain, s, w.gen),
    ),
}
SEEDED_RULES.update({f"{name}_sweep": rule.swept() for name, rule in SEEDED_RULES.items() if rule.sweep})
# SLURM minutes per job of every rule that uses a device, sized for config/paper.yaml's 200 epochs (a
# rule's <rule>_sweep and <rule>_seeds jobs ask for its own)
RUNTIMES = {
    "train_base": 720,
    "train_kd": 960,
    "train_ft": 960,
    "train_crd": 960,
    "train_dml": 1440,
    "train_bss": 1440,
    "import_teacher": 30,
    "teacher_cache": 120,
    "ft_paraphraser": 120,
}


def all_rule_runtimes() -> dict[str, int]:
    """Every rule that asks SLURM for a time limit, with its minutes: RUNTIMES' rules, the training rules' sweeps
    and each training rule's ``<rule>_seeds`` (rules/seeds.smk)."""
    names = [*RUNTIMES, *SEEDED_RULES, *(f"{name}_seeds" for name in SEEDED_RULES)]
    return {name: minutes for name in names if (minutes := rule_runtime(name)) is not None}


def rule_runtime(rule: str) -> int | None:
    """The SLURM time limit (minutes) a job of ``rule`` asks for before ``--set-resources`` (a
    ``<rule>_sweep`` or ``<rule>_seeds`` job its rule's); None for a rule that runs on the submitting node."""
    return RUNTIMES.get(rule.removesuffix("_seeds").removesuffix("_sweep"))


def seed_inputs(config: dict, rule: str, wildcards) -> dict:
    """The input files of one job of ``rule`` (a :data:`SEEDED_RULES` rule)."""
    return SEEDED_RULES[rule].inputs(config, wildcards, wildcards.seed)


def seed_options(config: dict, rule: str, wildcards) -> dict:
    """The options (``params.opts``) of one job of ``rule``."""
    return SEEDED_RULES[rule].options(config, wildcards, wildcards.seed)


def seeds_inputs(config: dict, rule: str, wildcards) -> dict:
    """Rule ``<rule>_seeds``: every seed's input files, named ``<input>_seed<s>``."""
    spec = SEEDED_RULES[rule]
    return {
        f"{name}_seed{seed}": path
        for seed in config["seeds"]
        for name, path in spec.inputs(config, wildcards, seed).items()
    }


def seeds_options(config: dict, rule: str, wildcards) -> dict:
    """Rule ``<rule>_seeds``: every seed's options, by the seed as text."""
    return {str(seed): SEEDED_RULES[rule].options(config, wildcards, seed) for seed in config["seeds"]}


def seeds_outputs(outputs, seeds) -> dict:
    """Rule ``<rule>_seeds``'s outputs: each named output of ``rule`` (patterns), for every seed."""
    return {name: [pattern.replace("{seed}", str(seed)) for seed in seeds] for name, pattern in outputs.items()}


def seeds_log(log: str) -> str:
    """Rule ``<rule>_seeds``'s log: ``rule``'s with its ``seed{seed}`` directory named ``seeds``."""
    if "/seed{seed}" not in log:
        raise KdpipeError(f"a seeded rule's log {log} has no seed{{seed}} directory")
    return log.replace("/seed{seed}", "/seeds", 1)


def seeds_job(run: RunId) -> str | None:
    """With ``resources.seeds_together``: the ``<rule>_seeds`` job's key that trains ``run`` (its run
    directory with ``seeds`` for ``seed<s>``), or None when its rule trains one seed per job."""
    if run.rule not in SEEDED_RULES:
        return None
    return re.sub(rf"/seed{run.seed}(?=/|$)", "/seeds", run.run_dir, count=1)


# ---------------------------------------------------------------- scripts
