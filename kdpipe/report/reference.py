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
from importlib.resources import files

import pandas as pd

COLUMNS = ["source", "dataset", "method", "teacher", "student", "role", "top1"]
CIFAR = ("cifar10", "cifar100")
PREFERRED_SOURCE = "KD-Zoo README"

# file -> ({their method name: kdpipe's}, the epoch its numbers are from)
_FILES = {
    "kdzoo_cifar.csv": ({}, "best"),  # train_kd.py keeps the best test top-1 over the epochs (is_best)
    # train_student.py: "The results reported in the paper/README is from the last epoch"
    "repdistiller_cifar100.csv": ({"kd": "st"}, "last"),
    "mdistiller_cifar100.csv": ({"kd": "st", "kd+dot": "st+dot"}, "best"),  # engine/trainer.py's best_acc
}
_DML_ROLE = re.compile(r"net\d+")


def load_reference() -> pd.DataFrame:
    """Every published cell of the sources, method names in kdpipe's terms, ``top1`` as float, and the
    ``epoch`` each source's numbers are from."""
    folder = files("kdpipe") / "reference"
    parts = []
    for name, (rename, epoch) in _FILES.items():
        with (folder / name).open("r", encoding="utf-8") as fh:
            part = pd.read_csv(fh, dtype=str, keep_default_na=False)
        part["method"] = part["method"].map(lambda m, rename=rename: rename.get(m, m))
        parts.append(part[COLUMNS].assign(epoch=epoch))
    reference = pd.concat(parts, ignore_index=True)
    reference["top1"] = pd.to_numeric(reference["top1"], errors="coerce").astype(float)
    return reference


def is_cifar(dataset: str) -> bool:
    return str(dataset).lower() in CIFAR


def published_for(
    reference: pd.DataFrame | None, dataset: str, method_label: str, teacher: str, student: str
) -> list[tuple[str, float]]:
    """The published ``(source, top1)`` cells for one table cell, in the reference's order (KD-Zoo first).

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
    epochs = set(reference.loc[reference["source"] == source, "epoch"])
    if len(epochs) != 1:
        raise ValueError(f"reference source {source!r}: epochs {sorted(epochs)}, need exactly one")
    return epochs.pop()


def preferred(matches: list[tuple[str, float]]) -> tuple[str, float] | None:
    """The one published value a table shows: KD-Zoo's when several sources match."""
    if not matches:
        return None
    for source, top1 in matches:
        if source == PREFERRED_SOURCE:
            return source, top1
    return matches[0]
