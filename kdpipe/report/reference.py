"""Published top-1 accuracies (KD-Zoo, RepDistiller, mdistiller) and how they line up with kdpipe's table cells.

The reference CSVs ship inside the package (``kdpipe/reference/*.csv``; columns ``source,
dataset, method, teacher, student, role, top1``).  Method names are mapped to kdpipe's:
RepDistiller and mdistiller call Hinton's soft targets ``kd``, kdpipe calls them ``st`` (and
mdistiller's ``kd+dot``, soft targets trained with the DOT optimizer, ``st+dot``).  Each source's
numbers are from one epoch of its runs (column ``epoch``): ``last``, the final epoch, or ``best``,
the epoch with the best test accuracy.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import replace
from functools import cache
from pathlib import Path
from importlib.resources import files

import pandas as pd

COLUMNS = ["source", "dataset", "method", "teacher", "student", "role", "top1"]
CIFAR = ("cifar10", "cifar100")
PREFERRED_SOURCE = "KD-Zoo README"

# file -> ({their method name: kdpipe's}, the epoch its numbers are from, the shipped config that plans its recipe)
_FILES = {
    "kdzoo_cifar.csv": ({}, "best", "paper.yaml"),  # train_kd.py keeps the best test top-1 over the epochs (is_best)
    # train_student.py: "The results reported in the paper/README is from the last epoch"
    "repdistiller_cifar100.csv": ({"kd": "st"}, "last", "repdistiller.yaml"),
    "mdistiller_cifar100.csv": ({"kd": "st", "kd+dot": "st+dot"}, "best", "mdistiller.yaml"),  # trainer.py's best_acc
}
RECIPE_CONFIGS = tuple(dict.fromkeys(config for _, _, config in _FILES.values()))
_DML_ROLE = re.compile(r"net\d+")


def load_reference() -> pd.DataFrame:
    """Every published cell of the sources, method names in kdpipe's terms, ``top1`` as float, the
    ``epoch`` each source's numbers are from and the ``recipe``: the shipped config (``config/<recipe>``)
    whose runs train as that source's did."""
    folder = files("kdpipe") / "reference"
    parts = []
    for name, (rename, epoch, recipe) in _FILES.items():
        with (folder / name).open("r", encoding="utf-8") as fh:
            part = pd.read_csv(fh, dtype=str, keep_default_na=False)
        part["method"] = part["method"].map(lambda m, rename=rename: rename.get(m, m))
        parts.append(part[COLUMNS].assign(epoch=epoch, recipe=recipe))
    reference = pd.concat(parts, ignore_index=True)
    reference["top1"] = pd.to_numeric(reference["top1"], errors="coerce").astype(float)
    return reference


def is_cifar(dataset: str) -> bool:
    return str(dataset).lower() in CIFAR


def published_for(
    reference: pd.DataFrame | None,
    dataset: str,
    method_label: str,
    teacher: str,
    student: str,
    recipes: Iterable[str] | None = None,
) -> list[tuple[str, float]]:
    """The published ``(source, top1)`` cells for one table cell, in the reference's order (KD-Zoo first);
    with ``recipes`` (the shipped configs whose planned options the cell's runs trained with: the summary's
    ``follows``), only those of sources with one of those recipes.

    ``method_label`` is a row label of :func:`kdpipe.report.frame.method_label`; ``teacher`` and
    ``student`` are the group's pair.  'baseline' is the student's own baseline, 'teacher' the
    teacher's baseline; a plain method matches (method, teacher, student) as a student; 'dml netK'
    matches DML's peer K; 'bss gen1' matches BSS (one distillation).  Variants with '+st', later
    generations, born-again chains and non-CIFAR datasets have no published counterpart; '+dot'
    variants match mdistiller's DOT rows.
    """
    if reference is None or not is_cifar(dataset):
        return []
    ref = reference[reference["dataset"].str.lower() == str(dataset).lower()]
    if recipes is not None:
        ref = ref[ref["recipe"].isin(list(recipes))]
    label = str(method_label).strip()
    is_base = ref["method"] == "baseline"
    if label == "baseline":
        rows = ref[is_base & (ref["student"] == student)]
    elif label == "teacher":
        rows = ref[is_base & (ref["student"] == teacher)]
    else:
        name, _, qualifier = label.partition(" ")
        if name == "dml":
            if not _DML_ROLE.fullmatch(qualifier):
                return []
            role = qualifier
        elif name == "bss" and qualifier in ("", "gen1"):
            role = "student"
        elif qualifier:
            return []
        else:
            role = "student"
        rows = ref[
            (ref["method"] == name) & (ref["teacher"] == teacher) & (ref["student"] == student) & (ref["role"] == role)
        ]
    return [(str(source), float(top1)) for source, top1 in zip(rows["source"], rows["top1"])]


def reported_epoch(reference: pd.DataFrame, source: str) -> str:
    """The epoch ``source``'s numbers are from: ``best`` (its best test epoch) or ``last``."""
    return _of_source(reference, source, "epoch")


def source_recipe(reference: pd.DataFrame, source: str) -> str:
    """The shipped config whose runs train as ``source``'s did (``paper.yaml`` for KD-Zoo's)."""
    return _of_source(reference, source, "recipe")


def _of_source(reference: pd.DataFrame, source: str, column: str) -> str:
    values = set(reference.loc[reference["source"] == source, column])
    if len(values) != 1:
        raise ValueError(f"reference source {source!r}: {column} {sorted(values)}, need exactly one")
    return values.pop()


def preferred(matches: list[tuple[str, float]]) -> tuple[str, float] | None:
    """The one published value a table shows: KD-Zoo's when several sources match."""
    if not matches:
        return None
    for source, top1 in matches:
        if source == PREFERRED_SOURCE:
            return source, top1
    return matches[0]


# Options that do not make a run's recipe another: where and how fast it ran (the device group: the tables
# stand bf16 beside float32, README "Data and protocol"), which seeded draw it is, and its inputs (a
# teacher, a paraphraser, a teacher cache, the data manifest its data are checked against, which each
# config's DAG places where it will; an imported teacher's file and format, the source's own run).
RECIPE_NEUTRAL = frozenset(
    {"seed", "split_seed", "t_model", "paraphraser", "teacher_cache", "src", "source", "data_manifest"}
)


def follows(run, options: dict, entry: str) -> list[str]:
    """The shipped configs of :data:`RECIPE_CONFIGS` whose runs train as this one did: each plans ``run``
    (a :class:`kdpipe.plan.RunId`; its dataset among the config's) with ``options`` (its ``run.json``
    ``config``, an ``entry``'s resolved options) on every key but the neutral ones.  A published number
    stands beside a run only if its source's config is among these: a run with another temperature,
    weight, form, schedule or training set is not the run the source reported."""
    from ..errors import KdpipeError
    from ..options import COMMON_GROUPS, differing_keys, fingerprint_options, resolve
    from ..workflow import run_options

    neutral = RECIPE_NEUTRAL | set(COMMON_GROUPS["device"])
    inputs = {k: options.get(k) for k in RECIPE_NEUTRAL if k in options}
    out = []
    for name in RECIPE_CONFIGS:
        config = recipe_config(name)
        if config is None or run.dataset not in config["datasets"]:
            continue
        for same in _same_runs(run):
            try:
                planned = resolve(entry, {**inputs, **run_options(config, same)})
            except (KdpipeError, KeyError):  # not a run this config plans (a sweep point, a pair it has not)
                continue
            differing = differing_keys(fingerprint_options(planned), fingerprint_options(options))
            if not [key for key in differing if key not in neutral]:
                out.append(name)
                break
    return out


def _same_runs(run):
    """``run``, and for a born-again chain of a network with itself the same runs under the chain's other
    name: a ``bss.nets`` chain ``<net>`` and a ``bss.pairs`` chain ``<net>-<net>`` train alike (one config
    may not have both; config/paper.yaml has the second)."""
    yield run
    if run.rule == "train_bss" and run.teacher == run.student:
        parts = Path(run.run_dir).parts  # .../bss/<chain>/seed<s>/gen<g>
        names = (run.student, f"{run.student}-{run.student}")
        if parts[-3] in names:
            twin = names[1 - names.index(parts[-3])]
            yield replace(run, run_dir=str(Path(*parts[:-3], twin, *parts[-2:])))


def recipe_paths(config: dict) -> list[str]:
    """The recipe configs of this checkout where ``config`` trains on CIFAR (the summary rule's inputs: editing
    one re-runs the summary, whose ``follows`` reads them; other datasets have no published numbers)."""
    if not any(is_cifar(name) for name in config["datasets"]):
        return []
    return [str(path) for path in map(_recipe_path, RECIPE_CONFIGS) if path.is_file()]


def _recipe_path(name: str):
    from ..workflow import ROOT

    return ROOT / "config" / name


@cache
def recipe_config(name: str) -> dict | None:
    """``config/<name>`` of this checkout, loaded as the workflow loads a config (None where absent)."""
    from ..config import load_config, read_config_file

    path = _recipe_path(name)
    return load_config(read_config_file(path), check_pairs=False) if path.is_file() else None
