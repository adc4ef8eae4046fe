"""The Snakemake side of kdpipe, kept in the package so it is importable and testable.

* :func:`load_config` validates a workflow config against ``kdpipe/config.schema.yaml``
  (JSON schema, defaults filled in) plus the checks a schema cannot express.
* :func:`base_runs`, :func:`run_targets` enumerate the DAG's run directories.
* :func:`base_options` builds the slice of config one rule needs (its ``params:``),
  so a changed setting re-runs exactly the jobs that read it.
* :func:`run_rule` is what every ``scripts/*.py`` calls.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import sys
from pathlib import Path

import yaml

from .errors import KdpipeError
from .options import PARAPHRASER_EPOCHS
from .plan import (  # noqa: F401  (the DAG's names, used by the rules through `kw`)
    RESULTS,
    base_nets,
    bss_chains,
    cohort_name,
    crd_variants,
    kd_variants,
    pair_name,
    plan,
    run_dir,
    runs_of,
    split_variant,
    teacher_seed,
)
from .report import RACES

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"
BUILTIN_DATASETS = ("cifar10", "cifar100", "digits")


# ---------------------------------------------------------------- config


def _schema() -> dict:
    return yaml.safe_load(SCHEMA_PATH.read_text())


def _validator(schema: dict):
    import jsonschema

    base = jsonschema.Draft7Validator

    def set_defaults(validator, properties, instance, schema):
        if isinstance(instance, dict):
            for name, sub in properties.items():
                if "default" in sub and name not in instance:
                    instance[name] = copy.deepcopy(sub["default"])
        yield from base.VALIDATORS["properties"](validator, properties, instance, schema)

    return jsonschema.validators.extend(base, {"properties": set_defaults})(schema)


def _path(error) -> str:
    return ".".join(str(p) for p in error.absolute_path) or "(top level)"


def load_config(config: dict) -> dict:
    """Validate ``config`` in place (filling defaults) and return it; one-line errors."""
    validator = _validator(_schema())
    errors = sorted(validator.iter_errors(config), key=lambda e: (len(list(e.absolute_path)), str(e.absolute_path)))
    if errors:
        err = errors[0]
        if err.validator == "additionalProperties":
            allowed = ", ".join(sorted(err.schema.get("properties", {})))
            raise KdpipeError(f"config {_path(err)}: {err.message}; allowed keys: {allowed}")
        if err.validator in ("oneOf", "anyOf") and err.schema.get("description"):
            raise KdpipeError(f"config {_path(err)}: {err.message}; allowed: {err.schema['description']}")
        raise KdpipeError(f"config {_path(err)}: {err.message}")
    _check_semantics(config)
    return config


def _check_semantics(config: dict) -> None:
    from .models import MODELS

    if len(set(config["seeds"])) != len(config["seeds"]):
        raise KdpipeError(f"config seeds: {config['seeds']} repeats a seed")
    for name in config["datasets"]:
        if name not in BUILTIN_DATASETS and name not in config["imagefolders"]:
            raise KdpipeError(
                f"config datasets: unknown dataset {name!r}; choose from {', '.join(BUILTIN_DATASETS)} "
                "or a name defined under imagefolders"
            )
    for name in config["imagefolders"]:
        if name in BUILTIN_DATASETS:
            raise KdpipeError(f"config imagefolders.{name}: the name is taken by a built-in dataset")
    named = [("base.nets", net) for net in config["base"]["nets"]]
    named += [
        (f"pairs.{i}.{role}", pair[role]) for i, pair in enumerate(config["pairs"]) for role in ("teacher", "student")
    ]
    for key, net in named:
        if net not in MODELS:
            raise KdpipeError(f"config {key}: unknown network {net!r}; choose from {', '.join(MODELS)}")
    from .losses import LOSSES

    for key in ("modes", "with_st"):
        for mode in config["kd"][key]:
            if mode not in LOSSES:
                raise KdpipeError(f"config kd.{key}: unknown mode {mode!r}; choose from {', '.join(LOSSES)}")
    for mode, settings in config["kd"]["settings"].items():
        if mode not in LOSSES:
            raise KdpipeError(f"config kd.settings: unknown mode {mode!r}; choose from {', '.join(LOSSES)}")
        allowed = set(LOSSES[mode].defaults) | ({"init_epochs", "init_optimizer"} if LOSSES[mode].two_stage else set())
        for key in settings:
            if key not in allowed:
                raise KdpipeError(
                    f"config kd.settings.{mode}.{key}: not a setting of {mode}; allowed: {', '.join(sorted(allowed))}"
                )
    for i, cohort in enumerate(config["dml"]["cohorts"]):
        for net in cohort:
            if net not in MODELS:
                raise KdpipeError(f"config dml.cohorts.{i}: unknown network {net!r}; choose from {', '.join(MODELS)}")
    for net in config["bss"]["nets"]:
        if net not in MODELS:
            raise KdpipeError(f"config bss.nets: unknown network {net!r}; choose from {', '.join(MODELS)}")
    for section in ("ft", "crd"):
        if config[section]["enabled"] and not config["pairs"]:
            raise KdpipeError(f"config {section}.enabled: true, but there are no teacher/student pairs")
    if config["bss"]["pairs"] and not config["pairs"]:
        raise KdpipeError("config bss.pairs: true, but there are no teacher/student pairs")
    if (config["kd"]["modes"] or config["kd"]["with_st"]) and not config["pairs"]:
        raise KdpipeError("config pairs: kd modes are listed but no teacher/student pairs")
    if not base_nets(config):
        raise KdpipeError("config base.nets: nothing to train; list networks in base.nets or pairs")


def data_name(config: dict, dataset: str) -> str:
    if dataset in config["imagefolders"]:
        entry = config["imagefolders"][dataset]
        return f"imagefolder:{entry['path'] if isinstance(entry, dict) else entry}"
    return dataset


def image_size(config: dict, dataset: str) -> int | None:
    """The resize of an image-folder dataset (None: built-in datasets, or the default 32)."""
    entry = config["imagefolders"].get(dataset)
    return entry.get("image_size") if isinstance(entry, dict) else None


# ---------------------------------------------------------------- DAG nodes


def base_runs(config: dict) -> list[str]:
    return runs_of(config, "train_base")


def kd_runs(config: dict) -> list[str]:
    return runs_of(config, "train_kd")


def ft_runs(config: dict) -> list[str]:
    return runs_of(config, "train_ft")


def crd_runs(config: dict) -> list[str]:
    return runs_of(config, "train_crd")


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
    from .data import IMAGE_SUFFIXES, cifar_files

    name = data_name(config, dataset)
    if name in ("cifar10", "cifar100"):
        files = [str(Path(config["data"]["img_root"]) / f) for f in cifar_files(name)]
    elif name.startswith("imagefolder:"):
        root = Path(name.split(":", 1)[1])
        files = sorted(str(p) for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES) if root.is_dir() else []
    else:
        files = []
    return [f for f in files if Path(f).is_file()]


def write_data_manifest(opts: dict, path: str | Path) -> dict:
    """Load the dataset as the runs will and write its manifest (content hashes, classes, split)."""
    from .checkpoint import atomic_write_json
    from .data import load_data

    data = load_data(**opts)
    manifest = {**data.describe(), "options": {k: v for k, v in opts.items() if k not in ("img_root", "download")}}
    atomic_write_json(Path(path), manifest)
    return manifest


# ---------------------------------------------------------------- teacher cache


def _cache_setting(config: dict) -> str:
    value = config["teacher_cache"]
    return {True: "on", False: "off"}.get(value, value)  # YAML reads a bare on/off as a boolean


def cache_consumers(config: dict, dataset: str, teacher: str, tseed: int) -> list[tuple[str, int]]:
    """(run directory, epochs) of every student that could read this teacher's cache."""
    from .losses import LOSSES

    runs = []
    for pair in config["pairs"]:
        if pair["teacher"] != teacher:
            continue
        for seed in config["seeds"]:
            if teacher_seed(config, seed) != tseed:
                continue
            for variant in kd_variants(config):
                if LOSSES[split_variant(variant)[0]].cacheable():
                    runs.append(
                        (run_dir(dataset, f"kd-{variant}", pair_name(pair), seed), _training(config, "kd")["epochs"])
                    )
            for variant in crd_variants(config):
                runs.append((run_dir(dataset, variant, pair_name(pair), seed), _training(config, "crd")["epochs"]))
    return runs


def cache_decision(config: dict, dataset: str, teacher: str, tseed) -> tuple[bool, str]:
    """Whether students of (dataset, teacher, teacher seed) read a cache, and why."""
    from .cache import MAX_CACHE_VIEWS
    from .data import augmentation_of

    setting = _cache_setting(config)
    views = augmentation_of(data_name(config, dataset), image_size(config, dataset)).num_views
    consumers = cache_consumers(config, dataset, teacher, int(tseed))
    passes = sum(epochs for _, epochs in consumers)
    if setting == "off":
        return False, "teacher_cache: off"
    if not consumers:
        return False, "no student reads only logits or embeddings"
    if views > MAX_CACHE_VIEWS:
        return False, f"{views} views per image exceed the {MAX_CACHE_VIEWS} an exhaustive cache allows"
    if setting == "on":
        return True, f"teacher_cache: on ({views} views per image)"
    if passes > views:
        return True, (
            f"auto: {len(consumers)} students x their epochs = {passes} live teacher passes per image > {views} views"
        )
    return False, f"auto: {passes} live teacher passes per image <= {views} views, the cache would not pay off"


def cache_dir(dataset: str, teacher: str, tseed) -> str:
    return run_dir(dataset, "cache", teacher, tseed)


def cache_plan(config: dict) -> list[str]:
    """One line per (dataset, teacher, teacher seed) with cache consumers: the decision and its reason."""
    lines = []
    for dataset in config["datasets"]:
        for teacher in teacher_nets(config):
            for tseed in sorted({teacher_seed(config, s) for s in config["seeds"]}):
                if not cache_consumers(config, dataset, teacher, tseed):
                    continue
                use, why = cache_decision(config, dataset, teacher, tseed)
                lines.append(
                    f"teacher cache {cache_dir(dataset, teacher, tseed)}: {'built' if use else 'not used'} -- {why}"
                )
    return lines


def student_teacher_inputs(config: dict, dataset: str, teacher: str, seed, cacheable: bool) -> dict:
    """Inputs of a student rule: data and teacher checkpoint, plus the cache files when the plan uses them."""
    inputs = {"data": data_manifest_path(dataset), "teacher": teacher_model(config, dataset, teacher, seed)}
    tseed = teacher_seed(config, seed)
    if cacheable and cache_decision(config, dataset, teacher, tseed)[0]:
        inputs["cache"] = f"{cache_dir(dataset, teacher, tseed)}/cache.pt"
        inputs["manifest"] = f"{cache_dir(dataset, teacher, tseed)}/manifest.json"
    return inputs


def kd_inputs(config: dict, dataset: str, variant: str, teacher: str, seed) -> dict:
    from .losses import LOSSES

    return student_teacher_inputs(config, dataset, teacher, seed, LOSSES[split_variant(variant)[0]].cacheable())


def cache_options(config: dict, dataset: str, teacher: str, tseed) -> dict:
    return {
        **data_options(config, dataset),
        "seed": int(tseed),
        "t_name": teacher,
        "cache_dtype": config["cache_dtype"],
        "embeddings": True,
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


def gpus_per_training_job(config: dict, slurm: bool = False) -> int:
    """The ``gpu`` resource of every training rule.

    Locally: 1 when training runs on CUDA here (so ``--resources gpu=N`` bounds the jobs in
    flight), else 0.  Submitted to SLURM: what the job asks of the scheduler, independent of the
    login node's hardware: ``KDPIPE_SLURM_GPUS`` (1 by default; 0 for a CPU partition).
    ``resources.cuda: 0`` means no GPU either way.
    """
    if config["resources"]["cuda"] == 0:
        return 0
    if slurm:
        from .cluster import slurm_gpus

        return slurm_gpus()
    import torch

    return 1 if torch.cuda.is_available() else 0


# ---------------------------------------------------------------- params


def _training(config: dict, stage: str) -> dict:
    train = dict(config["train"])
    train.update(config[stage].get("train", {}))
    return train


def data_options(config: dict, dataset: str) -> dict:
    """The options that say which images a run of ``dataset`` sees (the data node's params)."""
    return {
        "data_name": data_name(config, dataset),
        "img_root": config["data"]["img_root"],
        "download": config["data"]["download"],
        "val_size": config["data"]["val_size"],
        "split_seed": config["data"]["split_seed"],
        "train_subset": config["data"]["train_subset"],
        "image_size": image_size(config, dataset),
    }


def _common(config: dict, dataset: str, seed: int, stage: str) -> dict:
    return {**data_options(config, dataset), "seed": int(seed), **_training(config, stage)}


def base_options(config: dict, dataset: str, net: str, seed) -> dict:
    return {**_common(config, dataset, seed, "base"), "net_name": net}


def _ft_shape(config: dict) -> dict:
    bn = config["ft"]["bn"]
    return {
        "ft_bn": {True: "on", False: "off"}.get(bn, bn),  # YAML reads a bare on/off as a boolean
        "para_decoder_out": config["ft"]["paraphraser_decoder_out"],
    }


def ft_paraphraser_options(config: dict, dataset: str, teacher: str, seed) -> dict:
    """KD-Zoo's paraphraser recipe: 30 epochs at a constant lr of the students' lr / 10, no Nesterov."""
    ft = config["ft"]
    opts = {**_common(config, dataset, seed, "ft"), "t_name": teacher, "k": ft["k"], **_ft_shape(config)}
    if ft["paraphraser_epochs"] == "scaled":
        opts["epochs"] = max(1, round(0.15 * opts["epochs"]))
    else:
        opts["epochs"] = ft["paraphraser_epochs"] or PARAPHRASER_EPOCHS  # the options' default
    opts["lr"] = ft["paraphraser_lr"] or opts["lr"] / 10
    opts["milestones"] = None  # a constant lr
    opts["warmup_epochs"] = 0
    return opts


def ft_options(config: dict, dataset: str, teacher: str, student: str, seed) -> dict:
    return {
        **_common(config, dataset, seed, "ft"),
        "t_name": teacher,
        "s_name": student,
        "lambda_kd": config["ft"]["lambda_kd"],
        "k": config["ft"]["k"],
        **_ft_shape(config),
    }


def crd_options(config: dict, dataset: str, variant: str, teacher: str, student: str, seed) -> dict:
    c = config["crd"]
    opts = {**_common(config, dataset, seed, "crd"), "t_name": teacher, "s_name": student}
    keys = ("lambda_kd", "feat_dim", "nce_n", "nce_t", "nce_mom", "mode", "sampler", "objective")
    opts.update({k: c[k] for k in keys})
    if variant.endswith("+st"):
        opts["st_weight"] = c["st_weight"]
    return opts


def dml_options(config: dict, dataset: str, cohort: str, seed) -> dict:
    return {
        **_common(config, dataset, seed, "dml"),
        "peers": cohort.split("-"),
        "lambda_kd": config["dml"]["lambda_kd"],
    }


def bss_options(config: dict, dataset: str, chain: str, seed, generation) -> dict:
    b = config["bss"]
    teacher, student = chain_nets(config, chain)
    generation = int(generation)
    return {
        **_common(config, dataset, seed, "bss"),
        "t_name": teacher if generation == 1 else student,
        "s_name": student,
        "generation": generation,
        **{k: b[k] for k in ("lambda_kd", "T", "attack_size", "attack_class", "attack_clamp")},
    }


def kd_options(config: dict, dataset: str, variant: str, teacher: str, student: str, seed) -> dict:
    """Options of one kd student: the common schedule plus only this mode's settings."""
    mode, with_st = split_variant(variant)
    opts = {**_common(config, dataset, seed, "kd"), "kd_mode": mode, "t_name": teacher, "s_name": student}
    opts.update(config["kd"]["settings"].get(mode, {}))
    if with_st:
        opts["st_weight"] = config["kd"]["st_weight"]
    return opts


# ---------------------------------------------------------------- scripts


@contextlib.contextmanager
def rule_logging(snakemake):
    """Send the ``kdpipe`` logger to the rule's ``log:`` file; bad input exits with one line."""
    from .errors import KdpipeError

    log_path = Path(snakemake.log[0])
    log_path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(log_path, mode="w")
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger = logging.getLogger("kdpipe")
    logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield logger
    except KdpipeError as exc:
        logger.error("error: %s", exc)
        print(f"kdpipe {snakemake.rule}: error: {exc}", file=sys.stderr)
        sys.exit(1)
    finally:
        logger.removeHandler(handler)
        handler.close()


def run_rule(snakemake, entry: str, message: str | None = None, **inputs) -> dict:
    """Body of ``scripts/*.py``: run an entry point into the directory of the rule's first output.

    ``inputs`` are options that name the rule's input files (``t_model=...``); ``message``
    is logged first (e.g. why the teacher cache is or is not used).
    """
    import kdpipe

    out_dir = Path(snakemake.output[0]).parent
    opts = dict(snakemake.params.opts)
    opts.update(inputs)
    opts.update(
        save_root=str(out_dir.parent),
        note=out_dir.name,
        threads=snakemake.threads,
        cuda=snakemake.config.get("resources", {}).get("cuda"),
    )
    function = kdpipe.build_teacher_cache if entry == "teacher_cache" else getattr(kdpipe, f"train_{entry}")
    runs = {run.run_dir: run for run in plan(snakemake.config)}
    run = runs.get(str(out_dir))  # helper nodes (caches, paraphrasers) are not runs of the plan
    from .runner import planned_identity  # torch: only inside a job, not when the Snakefile is parsed

    with rule_logging(snakemake) as logger, planned_identity(run.record() if run else None):
        if message:
            logger.info("%s", message)
        return function(**opts)


def student_rule(snakemake, entry: str) -> dict:
    """Body of the kd and crd scripts: the teacher, plus its cache when the plan gives one."""
    w = snakemake.wildcards
    use, why = cache_decision(snakemake.config, w.dataset, w.teacher, teacher_seed(snakemake.config, w.seed))
    inputs = {"t_model": snakemake.input.teacher}
    if "cache" in snakemake.input.keys():
        inputs["teacher_cache"] = str(Path(snakemake.input.cache).parent)
        message = f"teacher: cache -- {why}"
    else:
        message = f"teacher: live -- {why if not use else 'this method reads feature maps'}"
    return run_rule(snakemake, entry, message=message, **inputs)
