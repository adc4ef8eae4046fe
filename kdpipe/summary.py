"""One row per trained model, from the ``run.json`` files of finished runs."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .checkpoint import atomic_write_text

SUMMARY_COLUMNS = [
    "dataset",
    "method",
    "variant",
    "teacher",
    "student",
    "role",
    "seed",
    "generation",
    "epochs",
    "params",
    "best_val_acc",
    "test_acc_at_best",
    "last_test_acc",
    "train_time_s",
    "mean_epoch_s",
    "run_dir",
]


def _fmt(value, digits: int = 2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(float(value), digits)


def summary_rows(record_paths, teachers=(), dataset_names: dict | None = None) -> list[dict]:
    """Rows for every role of every run.

    Base runs carry role ``teacher`` when their network teaches in this config, else
    ``student`` (a baseline).  ``dataset_names`` maps a run's ``data_name`` to the
    workflow's dataset name (image folders are named in the config).
    """
    dataset_names = dataset_names or {}
    rows = []
    for path in record_paths:
        record = json.loads(Path(path).read_text())
        for role, info in record["roles"].items():
            if info["method"] == "baseline":
                role = "teacher" if info["student"] in teachers else "student"
            rows.append(
                {
                    "dataset": dataset_names.get(record["dataset"], record["dataset"]),
                    "method": info["method"],
                    "variant": info["variant"],
                    "teacher": info["teacher"],
                    "student": info["student"],
                    "role": role,
                    "seed": record["seed"],
                    "generation": "" if info["generation"] is None else info["generation"],
                    "epochs": record["epochs"],
                    "params": info["params"],
                    "best_val_acc": _fmt(info["best_val_acc"]),
                    "test_acc_at_best": _fmt(info["test_acc_at_best"]),
                    "last_test_acc": _fmt(info["last_test_acc"]),
                    "train_time_s": _fmt(record["train_time_s"], 2),
                    "mean_epoch_s": _fmt(record["mean_epoch_s"], 3),
                    "run_dir": str(Path(path).parent),
                }
            )
    return rows


def write_summary(record_paths, out_path, teachers=(), dataset_names: dict | None = None) -> list[dict]:
    rows = summary_rows(record_paths, teachers, dataset_names)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_path, buffer.getvalue())
    return rows
