"""The comparison table of one dataset: methods x teacher -> student pairs, over seeds, against published numbers.

:func:`comparison_table` computes it from the summary frame (:func:`kdpipe.report.frame.load_summary`);
:func:`write_tables` writes it as markdown (one table per pair), a tidy CSV and a LaTeX (booktabs) table.
Runs that failed, were interrupted or never ran are counted per cell (``not_ok``) and listed, so
they cannot silently drop out of a mean.
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd

from ..checkpoint import atomic_write_text
from .frame import group_rows, groups, report_status, runs_text, status_counts
from .reference import is_cifar, preferred, published_for, reported_epoch, source_recipe

STATS = ["n", "best", "best_std", "last", "last_std", "delta"]
PUBLISHED_STATS = ["published", "published_source", "published_epoch", "published_recipe", "diff"]
FIRST_LABELS = ("teacher", "baseline")
MINUS = "\u2212"
ARROW = "\u2192"
DASH = "\u2014"

CSV_COLUMNS = [
    "dataset",
    "group",
    "teacher",
    "student",
    "label",
    "n",
    "best_mean",
    "best_std",
    "last_mean",
    "last_std",
    "delta_vs_baseline",
    "published",
    "published_source",
    "published_epoch",
    "published_recipe",
    "diff_vs_published",
    "not_ok",
]
PUBLISHED_COLUMNS = ("published", "published_source", "published_epoch", "published_recipe", "diff_vs_published")


# ----------------------------------------------------------------------------------------------- computing


def _cells(frame: pd.DataFrame, dataset: str) -> tuple[list[str], list[str], dict]:
    """(row labels in table order, groups, {(label, group): the summary rows of that cell})."""
    frame = frame[frame["dataset"] == dataset]
    pairs = groups(frame, dataset)
    cells: dict = {}
    seen: list[str] = []
    for group in pairs:
        rows = group_rows(frame, group)
        for label in rows["label"]:
            if label not in seen:
                seen.append(label)
        for label in dict.fromkeys(rows["label"]):
            cells[(label, group)] = rows[rows["label"] == label]
    # first appearance in the summary (group_rows puts baselines after a group's runs)
    order = {label: i for i, label in enumerate(dict.fromkeys(frame["label"]))}
    others = sorted(
        (label for label in seen if label not in FIRST_LABELS),
        key=lambda label: (order.get(label, len(order)), seen.index(label)),
    )
    labels = [label for label in FIRST_LABELS if label in seen] + others
    return labels, pairs, cells


def _baseline_best(frame: pd.DataFrame) -> dict[str, float]:
    """{network: the best-on-val mean of its finished base runs} (teachers' base runs included)."""
    base = frame[(frame["method"] == "baseline") & (frame["status"] == "ok")]
    return {net: _mean(rows["test_acc_at_best"]) for net, rows in base.groupby("net")}


def _recipes(ok: pd.DataFrame) -> set[str]:
    """The recipes every finished run of a cell follows (the summary's ``follows``, '; '-joined)."""
    each = [set(filter(None, str(text).split("; "))) for text in ok["follows"]]
    return set.intersection(*each) if each else set()


def _mean(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.mean()) if len(values) else math.nan


def _std(values: pd.Series) -> float:
    values = values.dropna()
    return float(values.std(ddof=1)) if len(values) > 1 else math.nan


def comparison_table(frame: pd.DataFrame, dataset: str, reference: pd.DataFrame | None = None) -> pd.DataFrame:
    """Methods (index ``label``) x (group, stat) columns, over the seeds of each cell's finished runs.

    Stats per group: ``n`` (finished seeds), ``best``/``best_std`` (test accuracy at the best-on-val
    epoch, mean and sample std), ``last``/``last_std`` (last epoch), ``delta`` (best minus the best of the
    baseline of the cell's own network: a DML peer's against its network's; the teacher row's against the
    student's baseline, the gap distillation closes), ``not_ok`` (runs of the cell that failed, are
    incomplete or missing) and -- on CIFAR with a ``reference`` -- ``published``, ``published_source``
    (KD-Zoo preferred), ``published_epoch`` (the source's: ``best`` or ``last``), ``published_recipe`` (the
    shipped config that trains as the source did) and ``diff`` (ours minus published, ours the mean of the
    same epoch: ``last`` for a last-epoch source, else ``best``, our best-on-val).  A source's number
    stands only beside a cell whose finished runs all follow its recipe (the summary's ``follows``); where
    they do not, ``published`` is empty and ``published_recipe`` names the recipe they would need.
    """
    labels, pairs, cells = _cells(frame, dataset)
    with_published = reference is not None and is_cifar(dataset)
    stats = STATS + (PUBLISHED_STATS if with_published else []) + ["not_ok"]
    base_best = _baseline_best(frame[frame["dataset"] == dataset])
    data: dict = {}
    for group in pairs:
        teacher, _, student = group.partition("-")
        columns: dict = {stat: [] for stat in stats}
        for label in labels:
            rows = cells.get((label, group), frame.iloc[0:0])
            ok = rows[report_status(rows) == "ok"]  # a finished run without test accuracy is in no mean
            best, last = _mean(ok["test_acc_at_best"]), _mean(ok["last_test_acc"])
            nets = set(rows["net"])
            net = student if label == "teacher" or len(nets) != 1 else nets.pop()
            columns["n"].append(len(ok))
            columns["best"].append(best)
            columns["best_std"].append(_std(ok["test_acc_at_best"]))
            columns["last"].append(last)
            columns["last_std"].append(_std(ok["last_test_acc"]))
            columns["delta"].append(best - base_best.get(net, math.nan))
            columns["not_ok"].append(len(rows) - len(ok))
            if with_published:
                reported = preferred(published_for(reference, dataset, label, teacher, student))
                match = preferred(published_for(reference, dataset, label, teacher, student, _recipes(ok)))
                epoch = reported_epoch(reference, match[0]) if match else None
                # like with like: our last-epoch mean beside a last-epoch number, else our best-on-val mean
                ours = last if epoch == "last" else best
                columns["published"].append(match[1] if match else math.nan)
                columns["published_source"].append(match[0] if match else None)
                columns["published_epoch"].append(epoch)
                columns["published_recipe"].append(
                    source_recipe(reference, (match or reported)[0]) if reported else None
                )
                columns["diff"].append(ours - match[1] if match else math.nan)
        for stat in stats:
            data[(group, stat)] = columns[stat]
    index = pd.Index(labels, name="label")
    columns = (
        pd.MultiIndex.from_tuples(list(data), names=["group", "stat"])
        if data
        else pd.MultiIndex.from_tuples([], names=["group", "stat"])
    )
    table = pd.DataFrame(
        {key: pd.Series(values, index=index, dtype=_dtype(key[1])) for key, values in data.items()}, index=index
    )
    table.columns = columns
    return table


def _dtype(stat: str):
    if stat in ("n", "not_ok"):
        return "int64"
    if stat in ("published_source", "published_epoch", "published_recipe"):
        return object
    return "float64"


# ----------------------------------------------------------------------------------------------- formatting


def _isnan(value) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def _num(value) -> str:
    return DASH if _isnan(value) else f"{value:.2f}"


def _signed(value) -> str:
    if _isnan(value):
        return DASH
    text = f"{round(float(value), 2) + 0.0:+.2f}"  # + 0.0: no "-0.00"
    return text.replace("-", MINUS)


def _mean_std(mean, std, pm: str = " \u00b1 ") -> str:
    if _isnan(mean):
        return DASH
    return f"{mean:.2f}" if _isnan(std) else f"{mean:.2f}{pm}{std:.2f}"


def _status_counts(rows: pd.DataFrame | None) -> dict:
    return {} if rows is None else status_counts(report_status(rows))


def _not_ok_note(counts: dict, finished: int) -> str:
    """'(1 run failed)' beside a mean; 'missing' / 'failed (2 runs), missing' for a cell with nothing finished."""
    if not counts:
        return ""
    if finished == 0:
        return ", ".join(status if count == 1 else f"{status} ({count} runs)" for status, count in counts.items())
    return f"({runs_text(counts)})"


def _sources_shown(table: pd.DataFrame) -> list[str]:
    """The sources of the published numbers a table shows, short names ('KD-Zoo'), sorted."""
    return sorted(
        {
            _short_source(table[g].at[label, "published_source"])
            for g in table.columns.get_level_values("group").unique()
            for label in _shown(table, g)
            if not _isnan(table[g].at[label, "published_source"])
        }
    )


def _source_epochs(table: pd.DataFrame) -> dict[str, str]:
    """{short source name: the epoch its shown numbers are from ('best' or 'last')}."""
    return {
        _short_source(table[g].at[label, "published_source"]): table[g].at[label, "published_epoch"]
        for g in table.columns.get_level_values("group").unique()
        for label in _shown(table, g)
        if not _isnan(table[g].at[label, "published_source"])
    }


def _pair_title(group: str, arrow: str = f" {ARROW} ") -> str:
    teacher, _, student = group.partition("-")
    return f"{teacher}{arrow}{student}" if student else teacher


def _short_source(source) -> str:
    return str(source).removesuffix(" README")


def _shown(table: pd.DataFrame, group: str) -> list[str]:
    """The labels with anything to show in a group (finished or not)."""
    cell = table[group]
    return [label for label in table.index if cell.at[label, "n"] > 0 or cell.at[label, "not_ok"] > 0]


def _markdown(table: pd.DataFrame, frame: pd.DataFrame, dataset: str, cells: dict) -> str:
    with_published = "published" in table.columns.get_level_values("stat")
    lines = [f"# {dataset}: test accuracy (%) by method", ""]
    intro = (
        "Means \u00b1 sample standard deviations are over seeds (n = finished seeds); "
        "'best-on-val' is the test accuracy of the checkpoint from the epoch with the highest validation "
        "accuracy, 'last-epoch' that of the final epoch; \u0394 is the best-on-val mean minus that of the "
        "baseline of the row's network (a DML peer's own network; the teacher row: the student's baseline)."
    )
    if with_published:
        sources = _sources_shown(table)
        where = (
            f"the {' and '.join(sources)} README{'s' if len(sources) > 1 else ''}"
            if sources
            else "the KD-Zoo and RepDistiller READMEs (none reports these pairs)"
        )
        intro += (
            f" 'published' is the top-1 test accuracy reported in {where} (where several report a cell, that of "
            "the source whose recipe the cell's finished runs followed), "
            "from the epoch that source reports: 'last' its final epoch, 'best' its best test epoch; "
            "'ours \u2212 published' compares like with like: our last-epoch mean minus a 'last' number, "
            "our best-on-val mean minus a 'best' one (ours chosen on validation, theirs on the test set). "
            "A published number stands only beside runs that trained as its source's did: with the options "
            "the shipped config of that recipe plans for the cell (config/paper.yaml for KD-Zoo's, "
            "config/repdistiller.yaml and config/mdistiller.yaml for theirs; summary.csv's 'follows'), "
            "seeds, devices and precision aside; 'other recipe' marks a cell a source reports whose runs did not."
        )
    lines += [intro, ""]
    pairs = list(table.columns.get_level_values("group").unique())
    if not pairs:
        lines += ["No teacher \u2192 student comparisons were run on this dataset.", ""]
    header = ["method", "best-on-val test acc", "last-epoch test acc", "\u0394 vs baseline", "n"]
    align = ["---", "---:", "---:", "---:", "---:"]
    if with_published:
        header += ["published", "ours \u2212 published"]
        align += ["---:", "---:"]
    for group in pairs:
        cell = table[group]
        lines += [f"### {_pair_title(group)}", "", "| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
        for label in _shown(table, group):
            n = int(cell.at[label, "n"])
            note = _not_ok_note(_status_counts(cells.get((label, group))), n)
            if n == 0:
                best, last, delta = note, DASH, DASH
            else:
                best = _mean_std(cell.at[label, "best"], cell.at[label, "best_std"])
                best = f"{best} {note}" if note else best
                last = _mean_std(cell.at[label, "last"], cell.at[label, "last_std"])
                delta = DASH if label == "baseline" else _signed(cell.at[label, "delta"])
            row = [label, best, last, delta, str(n)]
            if with_published:
                row.append(_published_text(cell, label, n))
                row.append(_signed(cell.at[label, "diff"]) if n else DASH)
            lines.append("| " + " | ".join(row) + " |")
        lines.append("")
    lines += _not_finished(frame, dataset, cells)
    return "\n".join(lines).rstrip("\n") + "\n"


def _published_text(cell: pd.DataFrame, label: str, n: int) -> str:
    """'70.06 (KD-Zoo, best)'; 'other recipe (config/paper.yaml)' where a source reports the cell but its
    finished runs trained otherwise; a dash where no source reports it (or nothing finished to tell)."""
    published, recipe = cell.at[label, "published"], cell.at[label, "published_recipe"]
    if not _isnan(published):
        source = _short_source(cell.at[label, "published_source"])
        return f"{published:.2f} ({source}, {cell.at[label, 'published_epoch']})"
    if n and not _isnan(recipe):
        return f"{DASH} (other recipe than config/{recipe}'s)"
    return DASH


def _not_finished(frame: pd.DataFrame, dataset: str, cells: dict) -> list[str]:
    """The section listing every run of the dataset whose status is not ok."""
    lines = ["## Runs not finished", ""]
    bad = frame[(frame["dataset"] == dataset) & (frame["status"] != "ok")]
    if bad.empty:
        return lines + ["All runs finished.", ""]
    shown_in: dict = {}
    for (label, group), rows in cells.items():
        for run_dir in rows.loc[rows["status"] != "ok", "run_dir"]:
            shown_in.setdefault(run_dir, []).append((label, group))
    lines += ["| method | group | seed | status | note | run dir |", "|---|---|---:|---|---|---|"]
    for _, row in bad.drop_duplicates("run_dir").iterrows():
        places = shown_in.get(row["run_dir"], [])
        label = places[0][0] if places else row["label"]
        where = ", ".join(dict.fromkeys(_pair_title(g) for _, g in places)) or row["net"] or DASH
        seed = "" if _isnan(row["seed"]) else str(int(row["seed"]))
        note = str(row["note"]).replace("|", "\\|") or DASH
        lines.append(f"| {label} | {where} | {seed} | {row['status']} | {note} | `{_short_dir(row['run_dir'])}` |")
    return lines + [""]


def _short_dir(run_dir: str) -> str:
    parts = Path(str(run_dir)).parts
    return str(Path(*parts[parts.index("results") :])) if "results" in parts else str(run_dir)


def _csv(table: pd.DataFrame, dataset: str) -> str:
    with_published = "published" in table.columns.get_level_values("stat")
    records = []
    for group in table.columns.get_level_values("group").unique():
        teacher, _, student = group.partition("-")
        cell = table[group]
        for label in _shown(table, group):
            record = {
                "dataset": dataset,
                "group": group,
                "teacher": teacher,
                "student": student,
                "label": label,
                "n": int(cell.at[label, "n"]),
                "best_mean": cell.at[label, "best"],
                "best_std": cell.at[label, "best_std"],
                "last_mean": cell.at[label, "last"],
                "last_std": cell.at[label, "last_std"],
                "delta_vs_baseline": cell.at[label, "delta"],
                "not_ok": int(cell.at[label, "not_ok"]),
            }
            if with_published:
                record.update(
                    published=cell.at[label, "published"],
                    published_source=cell.at[label, "published_source"],
                    published_epoch=cell.at[label, "published_epoch"],
                    published_recipe=cell.at[label, "published_recipe"],
                    diff_vs_published=cell.at[label, "diff"],
                )
            records.append(record)
    columns = [c for c in CSV_COLUMNS if with_published or c not in PUBLISHED_COLUMNS]
    out = pd.DataFrame(records, columns=columns)
    for column in (
        "best_mean",
        "best_std",
        "last_mean",
        "last_std",
        "delta_vs_baseline",
        "published",
        "diff_vs_published",
    ):
        if column in out:
            out[column] = pd.to_numeric(out[column], errors="coerce").astype(float).round(4)
    return out.to_csv(index=False, lineterminator="\n")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "+": "$+$",
    # non-ASCII: pdflatex stops on a raw one; every symbol a label can hold (frame.SWEEP_SYMBOLS) has its form here
    "\u03bb": r"$\lambda$",
}


def tex_escape(text: str) -> str:
    """``text`` as LaTeX: its special characters escaped and its non-ASCII symbols in their LaTeX form."""
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(text))


def _latex(table: pd.DataFrame, dataset: str, cells: dict) -> str:
    with_published = "published" in table.columns.get_level_values("stat")
    pairs = list(table.columns.get_level_values("group").unique())
    body, flagged = [], False
    for label in table.index:
        if not any(table[g].at[label, "n"] > 0 or table[g].at[label, "not_ok"] > 0 for g in pairs):
            continue
        texts = []
        for group in pairs:
            cell = table[group]
            n, not_ok = int(cell.at[label, "n"]), int(cell.at[label, "not_ok"])
            if n == 0:
                text = tex_escape(_not_ok_note(_status_counts(cells.get((label, group))), 0)) if not_ok else "--"
            else:
                text = _mean_std(cell.at[label, "best"], cell.at[label, "best_std"], pm=r" $\pm$ ")
                if not_ok:
                    text += r"$^{\dagger}$"
                    flagged = True
            if with_published and (n or not_ok) and not _isnan(cell.at[label, "published"]):
                text += f" ({cell.at[label, 'published']:.2f})"
            texts.append(text)
        body.append(" & ".join([tex_escape(label)] + texts) + r" \\")
    caption = (
        f"{tex_escape(dataset)}: test accuracy (\\%) of the best-on-val checkpoint, mean $\\pm$ sample std over seeds"
    )
    sources = _sources_shown(table) if with_published else []
    if sources:
        caption += f"; published top-1 ({', '.join(tex_escape(s) for s in sources)}) in parentheses"
        # beside our best-on-val mean: say which epoch each source's number is from (RepDistiller's is its last)
        epochs = _source_epochs(table)
        caption += ", " + ", ".join(
            f"{tex_escape(s)}'s from its {'last' if epochs[s] == 'last' else 'best test'} epoch" for s in sources
        )
    if flagged:
        caption += r"; $^{\dagger}$ some runs of the cell did not finish"
    caption += "."
    key = re.sub(r"[^A-Za-z0-9]+", "-", dataset).strip("-") or "dataset"
    heads = [tex_escape(t) + r" $\rightarrow$ " + tex_escape(s) for t, _, s in (g.partition("-") for g in pairs)]
    header = " & ".join(["Method"] + heads) + r" \\"
    lines = [
        r"% requires \usepackage{booktabs}",
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{caption}}}",
        rf"\label{{tab:kdpipe-{key}}}",
        rf"\begin{{tabular}}{{l{'c' * len(pairs)}}}",
        r"\toprule",
        header,
        r"\midrule",
        *body,
        r"\bottomrule",
        r"\end{tabular}",
        r"\end{table}",
    ]
    return "\n".join(lines) + "\n"


def write_tables(
    frame: pd.DataFrame, dataset: str, out_md, out_csv, out_tex, reference: pd.DataFrame | None = None
) -> pd.DataFrame:
    """Write :func:`comparison_table` as markdown, tidy CSV and LaTeX (each atomically); returns the table.

    Published columns appear only for CIFAR datasets and only when ``reference``
    (:func:`kdpipe.report.reference.load_reference`) is given.
    """
    table = comparison_table(frame, dataset, reference)
    _, _, cells = _cells(frame, dataset)
    atomic_write_text(out_md, _markdown(table, frame, dataset, cells))
    atomic_write_text(out_csv, _csv(table, dataset))
    atomic_write_text(out_tex, _latex(table, dataset, cells))
    return table
