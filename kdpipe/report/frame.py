"""The summary and the per-epoch curves as pandas frames, with display labels and comparison groups.

A *group* is what a table column, a plot or a race compares: one teacher -> student pair
``"<teacher>-<student>"`` (a DML cohort and a born-again chain form groups the same way).
A group holds every non-baseline run of that pair, plus the baseline of its student
(label ``baseline``) and of its teacher (label ``teacher``, when the teacher differs).
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

NUMERIC = [
    "seed",
    "epochs",
    "params",
    "best_val_acc",
    "test_acc_at_best",
    "last_test_acc",
    "train_time_s",
    "mean_epoch_s",
    "cost_vs_baseline",
]


def load_summary(path: str | Path) -> pd.DataFrame:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    for column in NUMERIC:
        frame[column] = pd.to_numeric(frame[column], errors="coerce")
    frame["generation"] = pd.to_numeric(frame["generation"], errors="coerce")
    if "sweep" not in frame.columns:  # a summary written before kd.sweep
        frame["sweep"] = ""
    if "follows" not in frame.columns:  # a summary written before it said whose recipe a run follows
        frame["follows"] = ""
    frame["label"] = frame.apply(method_label, axis=1)
    if "group" not in frame.columns:  # a summary written before the plan recorded groups
        frame["group"] = frame.apply(group_of, axis=1)
    return frame


# How a swept key is written in labels (others by their option name): 'at λ=500', 'st T=2, lr=0.05'.
SWEEP_SYMBOLS = {"lambda_kd": "\u03bb"}


def sweep_items(text: str) -> list[tuple[str, object]]:
    """The summary's ``sweep`` column back as [(key, value)]: numbers as floats, other values as text."""
    items = []
    for part in str(text).split("; ") if text else []:
        key, _, value = part.partition("=")
        try:
            items.append((key, float(value)))
        except ValueError:
            items.append((key, value))
    return items


def sweep_label(text: str) -> str:
    """'lambda_kd=500; p=2' -> 'λ=500, p=2'."""
    return ", ".join(
        f"{SWEEP_SYMBOLS.get(key, key)}={value}" for key, _, value in (p.partition("=") for p in text.split("; "))
    )


def method_label(row) -> str:
    """Row name in tables and legends: 'baseline', 'teacher', 'st', 'at+st', 'dml net2', 'bss gen1', 'at λ=500'
    (a kd.sweep run), ..."""
    method, variant = row["method"], row["variant"]
    sweep = row.get("sweep", "")
    if sweep:
        return f"{method}{variant} {sweep_label(sweep)}"
    if method == "baseline":
        return "teacher" if row["role"] == "teacher" else "baseline"
    if method == "dml":
        return f"dml {row['role']}" if row["role"] else "dml"
    if method == "bss":
        generation = row["generation"]
        name = "born-again" if variant == "born-again" else "bss"
        return f"{name} gen{int(float(generation))}" if str(generation) not in ("", "nan") else name
    return f"{method}{variant}"


def group_of(row) -> str:
    """The pair a non-baseline row belongs to (empty for baselines, which join groups by network)."""
    if row["method"] == "baseline":
        return ""
    return f"{row['teacher']}-{row['student']}"


def group_rows(frame: pd.DataFrame, group: str) -> pd.DataFrame:
    """Every row shown in a group: its runs, the student's baseline and the teacher's base run."""
    teacher, _, student = group.partition("-")
    own = frame[frame["group"] == group]
    base = frame[frame["method"] == "baseline"]
    student_base = base[base["net"] == student].assign(label="baseline")
    parts = [own, student_base]
    if teacher != student and "+" not in student:
        parts.append(base[base["net"] == teacher].assign(label="teacher"))
    return pd.concat(parts, ignore_index=True)


def groups(frame: pd.DataFrame, dataset: str) -> list[str]:
    present = frame[(frame["dataset"] == dataset) & (frame["group"] != "")]["group"]
    return list(dict.fromkeys(present))


def load_curves(frame: pd.DataFrame) -> pd.DataFrame:
    """Per-epoch metrics of every finished run, one row per (run, role, epoch), with the summary's identity."""
    parts = []
    for _, row in frame[frame["status"] == "ok"].iterrows():
        metrics = pd.read_csv(Path(row["run_dir"]) / "metrics.csv")
        metrics = metrics[metrics["role"] == _metrics_role(row)]
        parts.append(
            metrics.assign(
                dataset=row["dataset"],
                label=row["label"],
                group=row["group"],
                net=row["net"],
                seed=row["seed"],
                method=row["method"],
            )
        )
    if not parts:
        return pd.DataFrame(columns=["dataset", "label", "group", "net", "seed", "epoch", "test_acc", "train_loss"])
    return pd.concat(parts, ignore_index=True)


def _metrics_role(row) -> str:
    """The role name inside metrics.csv (the summary renames base runs' 'net' to teacher/student)."""
    return "net" if row["method"] == "baseline" else row["role"]


NO_ACCURACY = "without test accuracy"


def report_status(rows: pd.DataFrame) -> pd.Series:
    """Each row's status as the reports count it: the summary's, except that a finished run whose ``run.json``
    holds no test accuracy (null: the runner writes None for a non-finite one) has no number to average, so it
    counts with the runs a mean leaves out, as 'without test accuracy' (tables, figures and races alike)."""
    no_accuracy = (rows["status"] == "ok") & rows["test_acc_at_best"].isna()
    return rows["status"].where(~no_accuracy, NO_ACCURACY)


def status_counts(status: pd.Series) -> dict[str, int]:
    """{status: runs} of the runs that did not finish ('failed', 'incomplete', 'missing'), in first-seen order."""
    bad = status[status != "ok"]
    return dict(bad.value_counts(sort=False).items()) if len(bad) else {}


def runs_text(counts: dict[str, int]) -> str:
    """'1 run failed, 2 runs missing' (the tables' and figures' words for what a mean leaves out)."""
    return ", ".join(f"{count} run{'s' if count > 1 else ''} {status}" for status, count in counts.items())
