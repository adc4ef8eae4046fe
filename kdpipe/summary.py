"""One row per trained model, from the run directories of a workflow.

The plan's identity records (:mod:`kdpipe.plan`) say what each run is; a finished run directory
holds ``run.json`` (see :mod:`kdpipe.runner`) with its numbers.  A run that failed, was
interrupted or never ran still gets a row -- with its ``status`` and, where the log says, why --
so nothing silently drops out of the tables, and it sits in the same group as a finished one.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from .checkpoint import CHECKPOINT, atomic_write_text
from .plan import RunId, sweep_value_text

SUMMARY_COLUMNS = [
    "dataset",
    "method",
    "variant",
    "sweep",
    "teacher",
    "student",
    "role",
    "net",
    "seed",
    "generation",
    "group",
    "epochs",
    "params",
    "best_val_acc",
    "test_acc_at_best",
    "last_test_acc",
    "train_time_s",
    "mean_epoch_s",
    "cost_vs_baseline",
    "settings",
    "follows",
    "status",
    "note",
    "run_dir",
]


# Accuracies keep 4 decimals: the tables average them and round the mean and std to 2, which per-run values
# already rounded to 2 would move by up to 0.005 (a last digit off: 89.42 +- 1.40 for 1.39).
ACC_DIGITS = 4


def _fmt(value, digits: int = 2):
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    return round(float(value), digits)


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
    if (run_dir / CHECKPOINT).is_file():
        return "incomplete", "interrupted; running the workflow again resumes it"
    return "missing", "not run (yet)"


# What the summary reads of every role in run.json's ``roles``, and of the run.
_ROLE_NUMBERS = ("params", "best_val_acc", "test_acc_at_best", "last_test_acc")
_RUN_NUMBERS = ("epochs", "train_time_s", "mean_epoch_s")


_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def read_run_record(path: Path) -> tuple[dict | None, str]:
    """A finished run's ``run.json`` and "", or None and what is wrong with it ('unreadable (...)', 'not a run
    record (...)'), e.g. after an edit by hand: what the summary and a job that finds the run both read."""
    try:
        record = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        return None, f"unreadable ({exc})"
    problem = _run_record_problem(record)
    return (None, f"not a run record ({problem})") if problem else (record, "")


def _run_record_problem(record) -> str | None:
    if not isinstance(record, dict):
        return f"{_JSON_TYPES.get(type(record), 'null')}, not a JSON object"
    roles = record.get("roles")
    if not isinstance(roles, dict) or not roles or not all(isinstance(role, dict) for role in roles.values()):
        return "no roles"
    numbers = [(name, name, record) for name in _RUN_NUMBERS]
    numbers += [(f"roles.{role}.{name}", name, info) for role, info in roles.items() for name in _ROLE_NUMBERS]
    for where, name, holder in numbers:
        value = holder.get(name, "no such key")
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            return f"{where} is not a number" if name in holder else f"no {where}"
    if not isinstance(record.get("settings", {}), dict) or not isinstance(record.get("method", ""), str):
        return "its method or settings are damaged"
    if "settings" not in record and "method" not in record:
        return "no settings"
    for key in ("info", "config", "fingerprint"):
        if not isinstance(record.get(key, {}), dict):
            return f"its {key} is not an object"
    if "config" in record and not isinstance(record.get("entry"), str):  # _follows resolves the options by it
        return "no entry" if "entry" not in record else "its entry is not a string"
    outputs = record.get("outputs", [])
    if not isinstance(outputs, list) or not all(isinstance(name, str) for name in outputs):
        return "its outputs are not a list of file names"
    return None


def _settings(record: dict) -> str:
    """The method settings that distinguish runs, as 'key=value; ...': what the run's task declared
    (``run.json`` ``settings``)."""
    pairs = record["settings"] if "settings" in record else _settings_of_older_record(record)
    return "; ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in pairs.items())


def _settings_of_older_record(record: dict) -> dict:
    """The same for a ``run.json`` written before runs recorded their settings (read from its ``info``;
    frozen: settings added since are in ``settings``)."""
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
        if key in info and key not in pairs and not (key == "T" and (method == "kd" or info.get("st_weight"))):
            pairs[key] = info[key]
    if info.get("st_weight"):
        pairs["st_weight"] = info["st_weight"]
        pairs.setdefault("T", info.get("T"))
    if info.get("teacher_source") == "cache":
        pairs["teacher"] = "cache"
    return pairs


def _follows(run: RunId, record: dict) -> list[str]:
    """The ``follows`` column: the shipped configs whose published numbers' recipe the run trained with
    (:func:`kdpipe.report.reference.follows`); only CIFAR has published numbers, and only a run on the official
    files (``data.official``; a run recorded before kdpipe checked counts as one) follows a recipe."""
    from .report.reference import follows, is_cifar

    data = record.get("data")
    other_files = isinstance(data, dict) and data.get("official") is False
    if not is_cifar(run.dataset) or "config" not in record or other_files:
        return []
    return follows(run, record["config"], record["entry"])


def sweep_text(point) -> str:
    """The ``sweep`` column: a kd.sweep run's values as 'key=value; ...' ('lambda_kd=500; p=2'), '' otherwise
    (read back by :func:`kdpipe.report.frame.sweep_items`)."""
    return "; ".join(f"{key}={sweep_value_text(value)}" for key, value in point)


def _planned_roles(run: RunId) -> list[tuple[str, str]]:
    """(role, network) of the rows of a run that is not finished: a DML cohort's peers (net1, net2, ...),
    else one row with the plan's identity alone."""
    if run.method == "dml" and run.peers:
        return [(f"net{i}", net) for i, net in enumerate(run.peers, start=1)]
    return [("", "")]


def _role_net(run: RunId, record: dict, role: str) -> str:
    peers = record.get("info", {}).get("peers")
    if peers and role in peers:
        return peers[role]
    return run.student


def _identity_columns(run: RunId, teachers) -> dict:
    role = ""
    if run.method == "baseline":
        role = "teacher" if run.student in teachers else "student"
    return {
        "dataset": run.dataset,
        "method": run.method,
        "variant": run.variant,
        "sweep": sweep_text(run.sweep),
        "teacher": run.teacher,
        "student": run.student,
        "group": run.group,
        "role": role,
        "net": run.student,
        "seed": run.seed,
        "generation": "" if run.generation is None else run.generation,
        "run_dir": run.run_dir,
    }


def summary_rows(runs, teachers=()) -> list[dict]:
    """Rows for every role of every finished run, and for a run that is not finished (a run whose
    ``run.json`` is damaged too: status ``failed``, note ``run.json unreadable (...)``) one row, or one per
    peer of a DML cohort, so that its status counts in each peer's cell (``dml net1``, ``dml net2``).

    ``runs`` are the plan's identity records (:class:`~kdpipe.plan.RunId` or their dicts): they
    alone say what a run is and where it is compared; ``run.json`` gives the numbers.  Base runs
    carry role ``teacher`` when their network teaches in this config, else ``student``.
    """
    rows = []
    for run in runs:
        run = run if isinstance(run, RunId) else RunId.from_record(run)
        status, note = run_status(run.run_dir, run.log)
        record = None
        if status == "ok":
            record, problem = read_run_record(Path(run.run_dir) / "run.json")
            if record is None:  # a damaged run.json: a failed run, the others still aggregate
                status, note = "failed", f"run.json {problem}"
        if record is None:
            for role, net in _planned_roles(run):
                rows.append({**{c: "" for c in SUMMARY_COLUMNS}, **_identity_columns(run, teachers), "status": status})
                rows[-1].update(note=note, **({"role": role, "net": net} if role else {}))
            continue
        recipes = "; ".join(_follows(run, record))
        for role, info in record["roles"].items():
            row = _identity_columns(run, teachers)
            if run.method != "baseline":
                row.update(role=role, net=_role_net(run, record, role))
            rows.append(
                {
                    **row,
                    "epochs": record["epochs"],
                    "params": info["params"],
                    "best_val_acc": _fmt(info["best_val_acc"], ACC_DIGITS),
                    "test_acc_at_best": _fmt(info["test_acc_at_best"], ACC_DIGITS),
                    "last_test_acc": _fmt(info["last_test_acc"], ACC_DIGITS),
                    "train_time_s": _fmt(record["train_time_s"], 2),
                    "mean_epoch_s": _fmt(record["mean_epoch_s"], 3),
                    "cost_vs_baseline": "",
                    "settings": _settings(record),
                    "follows": recipes,
                    "status": "ok",
                    "note": "",
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


def write_summary(runs, out_path, teachers=()) -> list[dict]:
    rows = summary_rows(runs, teachers)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SUMMARY_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_path, buffer.getvalue())
    return rows
