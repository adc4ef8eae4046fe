"""One row per trained model, from the run directories of a workflow.

A finished run directory holds ``run.json`` (see :mod:`kdpipe.runner`); a run that failed,
was interrupted or never ran still gets a row -- with its ``status`` and, where the log
says, why -- so nothing silently drops out of the tables.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path

from .checkpoint import atomic_write_text

SUMMARY_COLUMNS = [
    "dataset",
    "method",
    "variant",
    "teacher",
    "student",
    "role",
    "net",
    "seed",
    "generation",
    "epochs",
    "params",
    "best_val_acc",
    "test_acc_at_best",
    "last_test_acc",
    "train_time_s",
    "mean_epoch_s",
    "cost_vs_baseline",
    "settings",
    "status",
    "note",
    "run_dir",
]

_RUN_DIR = re.compile(
    r"(?:^|/)(?P<dataset>[^/]+)/(?P<kind>[^/]+)/(?P<nets>[^/]+)/seed(?P<seed>\d+)(?:/gen(?P<gen>\d+))?/?$"
)


def _fmt(value, digits: int = 2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(float(value), digits)


def identity_from_path(run_dir: str | Path) -> dict:
    """What a workflow run directory stands for, read from its path (for runs with no run.json)."""
    m = _RUN_DIR.search(str(run_dir))
    if not m:
        raise ValueError(f"not a kdpipe run directory: {run_dir}")
    kind, nets = m["kind"], m["nets"]
    teacher, _, student = nets.partition("-")
    identity = {
        "dataset": m["dataset"],
        "seed": int(m["seed"]),
        "generation": int(m["gen"]) if m["gen"] else None,
        "variant": "",
        "teacher": teacher if student else "",
        "student": student or nets,
    }
    if kind == "base":
        identity.update(method="baseline", teacher="", student=nets)
    elif kind.startswith("kd-"):
        mode = kind[3:]
        identity.update(method=mode.removesuffix("+st"), variant="+st" if mode.endswith("+st") else "")
    elif kind.startswith("crd"):
        identity.update(method="crd", variant="+st" if kind.endswith("+st") else "")
    elif kind == "dml":
        peers = nets.split("-")
        identity.update(method="dml", teacher=peers[0], student="+".join(peers[1:]))
    elif kind == "bss":
        identity.update(method="bss", teacher=teacher or nets, student=student or nets)
    else:
        identity.update(method=kind)
    return identity


def run_status(run_dir: str | Path, log_path: str | Path | None = None) -> tuple[str, str]:
    """("ok" | "failed" | "incomplete" | "missing", a short reason)."""
    run_dir = Path(run_dir)
    if (run_dir / "run.json").is_file():
        return "ok", ""
    error = ""
    if log_path is not None and Path(log_path).is_file():
        errors = [line for line in Path(log_path).read_text(errors="replace").splitlines() if "error" in line.lower()]
        error = errors[-1].split("error:", 1)[-1].strip() if errors else ""
    if error:
        return "failed", error
    if (run_dir / "checkpoint.pt").is_file():
        return "incomplete", "interrupted; running the workflow again resumes it"
    return "missing", "not run (yet)"


def log_path_of(run_dir: str | Path) -> Path:
    """results/<dataset>/<kind>/<nets>/seed<s>[/gen<g>] -> results/logs/<dataset>/<kind>/<nets>/seed<s>[/gen<g>].log"""
    run_dir = Path(run_dir)
    parts = run_dir.parts
    root = parts.index("results") if "results" in parts else 0
    return Path(*parts[: root + 1], "logs", *parts[root + 1 :]).with_suffix(".log")


def _settings(record: dict) -> str:
    """The method settings that distinguish runs, as 'key=value; ...'."""
    info, method = record.get("info", {}), record["method"]
    pairs: dict = {}
    if "loss" in info:  # kd modes
        pairs.update(info["loss"]["settings"])
        if info.get("init_epochs"):
            pairs["init_epochs"] = info["init_epochs"]
            if "init_optimizer" in info:
                pairs["init_optimizer"] = info["init_optimizer"]
    for key in (
        "lambda_kd",
        "k",
        "ft_bn",
        "para_decoder_out",
        "mode",
        "sampler",
        "objective",
        "nce_n",
        "feat_dim",
        "T",
        "attack_size",
        "attack_class",
        "attack_clamp",
    ):
        if key in info and key not in pairs and not (method == "kd" and key == "T"):
            pairs[key] = info[key]
    if info.get("st_weight"):
        pairs["st_weight"] = info["st_weight"]
        pairs.setdefault("T", info.get("T"))
    if info.get("teacher_source") == "cache":
        pairs["teacher"] = "cache"
    return "; ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items())


def _role_net(record: dict, role: str, info: dict) -> str:
    peers = record.get("info", {}).get("peers")
    if peers and role in peers:
        return peers[role]
    return info["student"]


def summary_rows(run_dirs, teachers=(), dataset_names: dict | None = None) -> list[dict]:
    """Rows for every role of every finished run, and one row per run that is not finished.

    Base runs carry role ``teacher`` when their network teaches in this config, else
    ``student`` (a baseline).  ``dataset_names`` maps a run's ``data_name`` to the
    workflow's dataset name (image folders are named in the config).
    """
    dataset_names = dataset_names or {}
    rows = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if run_dir.name == "run.json":
            run_dir = run_dir.parent
        status, note = run_status(run_dir, log_path_of(run_dir))
        if status != "ok":
            identity = identity_from_path(run_dir)
            rows.append(
                {
                    **{c: "" for c in SUMMARY_COLUMNS},
                    **identity,
                    "net": identity["student"],
                    "role": "teacher" if identity["method"] == "baseline" and identity["student"] in teachers else "",
                    "generation": identity["generation"] or "",
                    "status": status,
                    "note": note,
                    "run_dir": str(run_dir),
                }
            )
            continue
        record = json.loads((run_dir / "run.json").read_text())
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
                    "net": _role_net(record, role, info),
                    "seed": record["seed"],
                    "generation": "" if info["generation"] is None else info["generation"],
                    "epochs": record["epochs"],
                    "params": info["params"],
                    "best_val_acc": _fmt(info["best_val_acc"]),
                    "test_acc_at_best": _fmt(info["test_acc_at_best"]),
                    "last_test_acc": _fmt(info["last_test_acc"]),
                    "train_time_s": _fmt(record["train_time_s"], 2),
                    "mean_epoch_s": _fmt(record["mean_epoch_s"], 3),
                    "cost_vs_baseline": "",
                    "settings": _settings(record),
                    "status": "ok",
                    "note": "",
                    "run_dir": str(run_dir),
                }
            )
    _add_costs(rows)
    return rows


def _add_costs(rows: list[dict]) -> None:
    """cost_vs_baseline: mean epoch time / that of the baseline run of the same network (same seed if any)."""
    baselines: dict = {}
    for row in rows:
        if row["method"] == "baseline" and row["status"] == "ok":
            baselines[(row["dataset"], row["net"], row["seed"])] = row["mean_epoch_s"]
            baselines.setdefault((row["dataset"], row["net"], None), row["mean_epoch_s"])
    for row in rows:
        if row["status"] != "ok" or not row["mean_epoch_s"]:
            continue
        base = baselines.get((row["dataset"], row["net"], row["seed"])) or baselines.get(
            (row["dataset"], row["net"], None)
        )
        if base:
            row["cost_vs_baseline"] = round(float(row["mean_epoch_s"]) / float(base), 3)


def write_summary(run_dirs, out_path, teachers=(), dataset_names: dict | None = None) -> list[dict]:
    rows = summary_rows(run_dirs, teachers, dataset_names)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_path, buffer.getvalue())
    return rows
