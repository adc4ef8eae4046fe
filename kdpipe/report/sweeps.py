"""Parameter sweeps (``kd.sweep``): accuracy against each swept value, and the value chosen on validation.

A sweep's runs are summary rows with a ``sweep`` column ('lambda_kd=500'; 'lambda_kd=500; p=2' for a
grid point).  :func:`sweep_stats` reduces them to one row per (pair, mode, point) over seeds: the
best-epoch validation accuracy (``best_val_acc``) and the test accuracy at that epoch
(``test_acc_at_best``), mean and sample std, and marks the point chosen **on validation** (:func:`best_points`);
the test numbers of every point stay beside it.  :func:`write_sweep_tables` writes them as markdown and
CSV, :func:`plot_sweep` draws test accuracy against one swept key.
"""

from __future__ import annotations

import math

import matplotlib
import numpy as np
import pandas as pd

from ..checkpoint import atomic_write_text
from .frame import SWEEP_SYMBOLS, sweep_items
from .plots import STYLE, _figure, _pair, _percent_axis, _save, placeholder
from .tables import ARROW, DASH, _mean, _mean_std, _std

CSV_COLUMNS = [
    "dataset",
    "group",
    "method",
    "sweep",
    "n",
    "not_ok",
    "val_mean",
    "val_std",
    "test_mean",
    "test_std",
    "last_mean",
    "last_std",
    "best",
]
LOG_SPAN = 10  # a numeric axis spanning this factor or more is drawn on a log scale
LABEL_BOX = {"boxstyle": "round,pad=0.15", "facecolor": "white", "edgecolor": "none", "alpha": 0.85}


def _cell(rows: pd.DataFrame) -> dict:
    ok = rows[(rows["status"] == "ok") & rows["test_acc_at_best"].notna()]
    return {
        "n": len(ok),
        "not_ok": len(rows) - len(ok),
        "val_mean": _mean(ok["best_val_acc"]),
        "val_std": _std(ok["best_val_acc"]),
        "test_mean": _mean(ok["test_acc_at_best"]),
        "test_std": _std(ok["test_acc_at_best"]),
        "last_mean": _mean(ok["last_test_acc"]),
        "last_std": _std(ok["last_test_acc"]),
    }


def sweep_stats(frame: pd.DataFrame, dataset: str) -> pd.DataFrame:
    """One row per (group, method, sweep point) of ``dataset``, in the summary's (the plan's) order: a grid's
    keys by name, the first varying slowest, each key's values as the config lists them; with
    :data:`CSV_COLUMNS` and ``best`` (:func:`best_points`)."""
    rows = frame[(frame["dataset"] == dataset) & (frame["sweep"] != "")]
    rows = rows.assign(sweep_method=rows["method"] + rows["variant"])
    records = [
        {"dataset": dataset, "group": group, "method": method, "sweep": sweep, **_cell(cell)}
        for (group, method, sweep), cell in rows.groupby(["group", "sweep_method", "sweep"], sort=False)
    ]
    stats = pd.DataFrame(records, columns=CSV_COLUMNS[:-1])
    stats["best"] = best_points(stats)
    return stats


def best_points(stats: pd.DataFrame) -> pd.Series:
    """Per (group, method): True for the point chosen on validation -- the highest mean best-epoch
    validation accuracy over seeds; ties go to more finished seeds, then the lower validation std, then
    the point first in the plan's order (:func:`sweep_stats`).  Test accuracy plays no part: runs without a
    validation split (``data.val_size: 0``) have no point chosen."""
    best = pd.Series(False, index=stats.index)
    chosen = stats[(stats["n"] > 0) & np.isfinite(stats["val_mean"].astype(float))]
    for _, sweep in chosen.groupby(["group", "method"], sort=False):
        order = sorted(
            range(len(sweep)),
            key=lambda i: (
                -sweep["val_mean"].iloc[i],
                -sweep["n"].iloc[i],
                sweep["val_std"].iloc[i] if np.isfinite(sweep["val_std"].iloc[i]) else math.inf,
                i,
            ),
        )
        best[sweep.index[order[0]]] = True
    return best


def reference(frame: pd.DataFrame, dataset: str, group: str, method: str, label: str) -> dict:
    """Validation and test means over seeds of a non-swept row of the group: the mode's own run
    (``label`` = the method) or the student's baseline (``label`` = 'baseline')."""
    rows = frame[frame["dataset"] == dataset]
    if label == "baseline":
        student = _pair(group)[1]
        rows = rows[(rows["method"] == "baseline") & (rows["net"] == student)]
    else:
        rows = rows[(rows["group"] == group) & (rows["label"] == method) & (rows["sweep"] == "")]
    return _cell(rows)


# ----------------------------------------------------------------------------------------------- tables


def _key_text(key: str) -> str:
    return f"{SWEEP_SYMBOLS[key]} ({key})" if key in SWEEP_SYMBOLS else key


def _markdown(frame: pd.DataFrame, stats: pd.DataFrame, dataset: str) -> str:
    lines = [
        f"# {dataset}: parameter sweeps (kd.sweep)",
        "",
        "Per swept value, mean \u00b1 sample std over seeds (n = finished seeds) of the best-epoch validation "
        "accuracy and of the test accuracy at that epoch (%). The value marked **best** has the highest mean "
        "validation accuracy (ties: more finished seeds, then the lower validation std, then the first listed); "
        "test accuracy plays no part in the choice. The mode's own run (kd.settings and the pair's settings) "
        "and the student's baseline are listed below each sweep for reference.",
        "",
    ]
    if stats.empty:
        return "\n".join(lines + ["No swept run on this dataset.", ""])
    for (group, method), sweep in stats.groupby(["group", "method"], sort=False):
        keys = [key for key, _ in sweep_items(sweep["sweep"].iloc[0])]
        teacher, student = _pair(group)
        lines += [
            f"### {teacher} {ARROW} {student}: {method}, {', '.join(keys)}",
            "",
            "| "
            + " | ".join(
                [*map(_key_text, keys), "best-epoch val acc", "best-on-val test acc", "last-epoch test acc", "n", ""]
            )
            + " |",
            "|" + "|".join(["---:"] * (len(keys) + 4) + ["---"]) + "|",
        ]
        for _, row in sweep.iterrows():
            values = [value for _, value in (p.partition("=")[::2] for p in row["sweep"].split("; "))]
            cells = [*values, *_numbers(row), "**best**" if row["best"] else ""]
            lines.append("| " + " | ".join(cells) + " |")
        for name, label in ((f"{method} (own settings)", method), ("baseline", "baseline")):
            ref = reference(frame, dataset, group, method, label)
            if ref["n"] or ref["not_ok"]:
                lines.append("| " + " | ".join([name, *[DASH] * (len(keys) - 1), *_numbers(ref), ""]) + " |")
        if sweep["n"].any() and not sweep["best"].any():
            lines += ["", "No value is marked best: these runs hold out no validation split (`data.val_size: 0`)."]
        lines.append("")
    return "\n".join(lines).rstrip("\n") + "\n"


def _numbers(row) -> list[str]:
    if not row["n"]:
        return [DASH, DASH, DASH, "0" + (f" ({row['not_ok']} not finished)" if row["not_ok"] else "")]
    n = str(int(row["n"])) + (f" ({int(row['not_ok'])} not finished)" if row["not_ok"] else "")
    return [
        _mean_std(row["val_mean"], row["val_std"]),
        _mean_std(row["test_mean"], row["test_std"]),
        _mean_std(row["last_mean"], row["last_std"]),
        n,
    ]


def write_sweep_tables(frame: pd.DataFrame, dataset: str, out_md, out_csv) -> pd.DataFrame:
    """Write :func:`sweep_stats` of ``dataset`` as markdown (one table per pair and mode) and tidy CSV."""
    stats = sweep_stats(frame, dataset)
    atomic_write_text(out_md, _markdown(frame, stats, dataset))
    out = stats.copy()
    for column in ("val_mean", "val_std", "test_mean", "test_std", "last_mean", "last_std"):
        out[column] = out[column].astype(float).round(4)
    atomic_write_text(out_csv, out.to_csv(index=False, lineterminator="\n"))
    return stats


# ----------------------------------------------------------------------------------------------- plot


def _axis_values(values: list) -> tuple[list[float], list[str] | None, bool]:
    """x positions, tick labels for text values (None for numbers), log scale?"""
    if all(isinstance(v, float) for v in values):
        positive = all(v > 0 for v in values)
        log = positive and max(values) / min(values) >= LOG_SPAN
        return list(values), None, log
    names = list(dict.fromkeys(str(v) for v in values))
    return [float(names.index(str(v))) for v in values], names, False


def plot_sweep(frame: pd.DataFrame, dataset: str, group: str, method: str, key: str, out_png):
    """Test accuracy (mean ± std over seeds, error bars) against the values of ``key`` in ``method``'s sweep
    on ``group``, one line per combination of the grid's other keys; the point chosen on validation ringed;
    validation accuracy dashed; the mode's own run and the student's baseline as horizontal lines."""
    stats = sweep_stats(frame, dataset)
    stats = stats[(stats["group"] == group) & (stats["method"] == method) & (stats["n"] > 0)]
    teacher, student = _pair(group)
    symbol = SWEEP_SYMBOLS.get(key, key)
    title = f"{dataset}: {teacher} \u2192 {student}, {method}: accuracy against {symbol}"
    points = [dict(sweep_items(text)) for text in stats["sweep"]]
    if stats.empty or key not in points[0]:
        return placeholder(out_png, title, f"no finished run of the {method} sweep over {key} yet")
    x, names, log = _axis_values([p[key] for p in points])
    series = [
        "; ".join(
            f"{SWEEP_SYMBOLS.get(k, k)}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in p.items() if k != key
        )
        for p in points
    ]
    palette = matplotlib.colormaps["tab10"]
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(8.0, 4.8)
        tops = []
        for i, name in enumerate(dict.fromkeys(series)):
            idx = [j for j, s in enumerate(series) if s == name]
            idx.sort(key=lambda j: x[j])
            xs = [x[j] for j in idx]
            rows = stats.iloc[idx]
            color = palette(i % 10)
            test_std = rows["test_std"].fillna(0.0).to_numpy()
            val_std = rows["val_std"].fillna(0.0).to_numpy()
            ax.errorbar(
                xs,
                rows["test_mean"],
                yerr=test_std,
                color=color,
                marker="o",
                linewidth=1.8,
                capsize=4,
                zorder=4,
                label=f"test{' ' + name if name else ''} (at the best-val epoch)",
            )
            ax.errorbar(
                xs,
                rows["val_mean"],
                yerr=val_std,
                color=color,
                marker="o",
                markerfacecolor="white",
                linestyle=(0, (4, 3)),
                linewidth=1.2,
                capsize=3,
                alpha=0.7,
                zorder=3,
                label=f"validation{' ' + name if name else ''}",
            )
            for xi, (_, row), std in zip(xs, rows.iterrows(), test_std):
                ax.annotate(
                    f"{row['test_mean']:.2f}",
                    (xi, row["test_mean"] + std),
                    xytext=(0, 5),
                    textcoords="offset points",
                    ha="center",
                    va="bottom",
                    fontsize=9,
                    color=color,
                    zorder=6,
                    bbox=LABEL_BOX,
                )
                if row["best"]:
                    ax.scatter(
                        [xi], [row["test_mean"]], s=260, facecolors="none", edgecolors="black", linewidths=1.6, zorder=5
                    )
                    ax.annotate(
                        "best on validation",
                        (xi, row["test_mean"] - std),
                        xytext=(0, -8),
                        textcoords="offset points",
                        ha="center",
                        va="top",
                        fontsize=9,
                        fontweight="bold",
                        zorder=6,
                        bbox=LABEL_BOX,
                    )
            tops += list(rows["test_mean"] + test_std) + list(rows["val_mean"] + val_std)
        lows = list(stats["test_mean"] - stats["test_std"].fillna(0.0)) + list(
            stats["val_mean"] - stats["val_std"].fillna(0.0)
        )
        for name, label, style in (
            (f"{method} (own settings)", method, {"color": "0.45", "linestyle": ":"}),
            ("baseline", "baseline", {"color": "black", "linestyle": (0, (5, 3))}),
        ):
            ref = reference(frame, dataset, group, method, label)
            if ref["n"]:
                ax.axhline(
                    ref["test_mean"], linewidth=1.2, zorder=2, label=f"{name}: test {ref['test_mean']:.2f}", **style
                )
                tops.append(ref["test_mean"])
                lows.append(ref["test_mean"])
        low, high = float(np.nanmin(lows)), float(np.nanmax(tops))
        margin = max(1.0, 0.15 * (high - low))
        ax.set_ylim(max(0.0, low - 1.5 * margin), min(100.0 + margin, high + 1.5 * margin))
        if log:
            ax.set_xscale("log")
        if names is not None:
            ax.set_xticks(range(len(names)), names)
            ax.set_xlim(-0.5, len(names) - 0.5)
        else:
            values = sorted(set(x))
            ax.set_xticks(values, [f"{v:g}" for v in values])
            ax.minorticks_off()
            if len(values) > 1 and not log:
                pad = 0.08 * (values[-1] - values[0])
                ax.set_xlim(values[0] - pad, values[-1] + pad)
            elif log:
                ax.set_xlim(values[0] / 1.4, values[-1] * 1.4)
        _percent_axis(ax.yaxis)
        ax.set_xlabel(f"{_key_text(key)}{' (log scale)' if log else ''}")
        ax.set_ylabel("accuracy (%), mean ± std over seeds")
        ax.set_title(title, loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, alignment="left")
        return _save(fig, out_png)
