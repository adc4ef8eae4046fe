"""The Snakemake side of kdpipe, kept in the package so it is importable and testable.

* :func:`load_config` validates a workflow config against ``config/schema.yaml``
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

ROOT = Path(__file__).resolve().parent.parent
SCHEMA_PATH = Path(__file__).resolve().parent / "config.schema.yaml"
BUILTIN_DATASETS = ("cifar10", "cifar100", "digits")
RESULTS = "results"


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
    named += [(f"pairs.{i}.{role}", pair[role]) for i, pair in enumerate(config["pairs"]) for role in ("teacher", "student")]
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
        allowed = set(LOSSES[mode].defaults) | ({"init_epochs"} if LOSSES[mode].two_stage else set())
        for key in settings:
            if key not in allowed:
                raise KdpipeError(
                    f"config kd.settings.{mode}.{key}: not a setting of {mode}; allowed: {', '.join(sorted(allowed))}"
                )
    if (config["kd"]["modes"] or config["kd"]["with_st"]) and not config["pairs"]:
        raise KdpipeError("config pairs: kd modes are listed but no teacher/student pairs")
    if not base_nets(config):
        raise KdpipeError("config base.nets: nothing to train; list networks in base.nets or pairs")


def data_name(config: dict, dataset: str) -> str:
    if dataset in config["imagefolders"]:
        return f"imagefolder:{config['imagefolders'][dataset]}"
    return dataset


# ---------------------------------------------------------------- DAG nodes


def run_dir(dataset: str, method: str, nets: str, seed: int) -> str:
    return f"{RESULTS}/{dataset}/{method}/{nets}/seed{seed}"


def base_nets(config: dict) -> list[str]:
    """Networks trained from scratch: the listed baselines and every teacher and student of a pair."""
    nets = list(config["base"]["nets"])
    for pair in config["pairs"]:
        nets += [pair["teacher"], pair["student"]]
    return list(dict.fromkeys(nets))


def base_runs(config: dict) -> list[str]:
    runs = [
        run_dir(dataset, "base", net, seed)
        for dataset in config["datasets"]
        for net in base_nets(config)
        for seed in config["seeds"]
    ]
    teachers = [  # a fixed teacher_seed outside seeds adds those teachers' runs
        run_dir(dataset, "base", pair["teacher"], teacher_seed(config, seed))
        for dataset in config["datasets"]
        for pair in config["pairs"]
        for seed in config["seeds"]
    ]
    return list(dict.fromkeys(runs + teachers))


def pair_name(pair: dict) -> str:
    return f"{pair['teacher']}-{pair['student']}"


def kd_variants(config: dict) -> list[str]:
    """Directory names of the kd student nodes: the mode, or ``<mode>+st`` with the soft-target term."""
    return list(config["kd"]["modes"]) + [f"{m}+st" for m in config["kd"]["with_st"]]


def kd_runs(config: dict) -> list[str]:
    return [
        run_dir(dataset, f"kd-{variant}", pair_name(pair), seed)
        for dataset in config["datasets"]
        for variant in kd_variants(config)
        for pair in config["pairs"]
        for seed in config["seeds"]
    ]


def teacher_seed(config: dict, seed) -> int:
    return int(seed) if config["teacher_seed"] is None else int(config["teacher_seed"])


def teacher_model(config: dict, dataset: str, teacher: str, seed) -> str:
    """The teacher checkpoint a student of ``seed`` reads (an output of train_base)."""
    return f"{run_dir(dataset, 'base', teacher, teacher_seed(config, seed))}/model.pt"


def run_targets(config: dict) -> list[str]:
    """Every run directory the summary aggregates."""
    return base_runs(config) + kd_runs(config)


def dataset_names(config: dict) -> dict:
    """data_name -> the config's dataset name (differs only for image folders)."""
    return {data_name(config, d): d for d in config["datasets"]}


def teacher_nets(config: dict) -> list[str]:
    """Networks that teach someone in this config (their base runs are reported as teachers)."""
    return list(dict.fromkeys(pair["teacher"] for pair in config["pairs"]))


# ---------------------------------------------------------------- params


def _training(config: dict, stage: str) -> dict:
    train = dict(config["train"])
    train.update(config[stage].get("train", {}))
    return train


def _common(config: dict, dataset: str, seed: int, stage: str) -> dict:
    return {
        "data_name": data_name(config, dataset),
        "img_root": config["data"]["img_root"],
        "download": config["data"]["download"],
        "val_size": config["data"]["val_size"],
        "split_seed": config["data"]["split_seed"],
        "train_subset": config["data"]["train_subset"],
        "seed": int(seed),
        **_training(config, stage),
    }


def base_options(config: dict, dataset: str, net: str, seed) -> dict:
    return {**_common(config, dataset, seed, "base"), "net_name": net}


def split_variant(variant: str) -> tuple[str, bool]:
    """``"at+st"`` -> ("at", True)."""
    return (variant[:-3], True) if variant.endswith("+st") else (variant, False)


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


def run_rule(snakemake, entry: str, **inputs) -> dict:
    """Body of ``scripts/train_<entry>.py``: train into the directory of the rule's first output.

    ``inputs`` are options that name the rule's input files (``t_model=...``).
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
    with rule_logging(snakemake):
        return getattr(kdpipe, f"train_{entry}")(**opts)
