"""Static report figures (PNG): per-epoch curves, final accuracies and accuracy against cost.

Every figure is a :class:`matplotlib.figure.Figure` drawn on an explicit Agg canvas: nothing here
uses pyplot, selects a global backend or changes ``matplotlib.rcParams`` (styles are applied with
``rc_context``), so these functions are safe in a long-lived process. Each function writes its PNG
atomically (a temporary name in the target folder, then ``os.replace``) and returns the path.

Colours are fixed per dataset by :func:`label_colors`: ``baseline`` black, ``teacher`` grey (drawn
dashed in line plots), every other method label a tab20 colour assigned in sorted-label order, so
one method has the same colour in every figure (and race) of a dataset.

A mean over a cell's seeds that leaves some of the cell's runs out (failed, interrupted or missing:
summary rows whose status is not ``ok``, counted per cell as the tables count ``not_ok``) never
looks complete: its value label, legend entry or point label says ``n=1 of 3`` (:func:`seeds_note`),
and ``final.png`` and the races list such cells under the figure (:func:`short_cell_lines`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from .frame import group_rows, report_status, runs_text, status_counts

DPI = 150
BASELINE_COLOR = (0.0, 0.0, 0.0, 1.0)
TEACHER_COLOR = (0.45, 0.45, 0.45, 1.0)
# tab20: the dark shade of each hue first, then the light ones; its greys (14, 15) are left out
# because grey means "teacher".
_TAB20_ORDER = [0, 2, 4, 6, 8, 10, 12, 16, 18, 1, 3, 5, 7, 9, 11, 13, 17, 19]
_MARKERS = ["o", "s", "^", "D", "v", "P", "X", "<", ">", "h", "p", "8"]
BASE_MARKER = "*"

STYLE = {
    "font.size": 11,
    "axes.titlesize": 13,
    "axes.labelsize": 11,
    "xtick.labelsize": 10,
    "ytick.labelsize": 10,
    "legend.fontsize": 10,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "savefig.facecolor": "white",
}

METRIC_NAMES = {
    "test_acc": "test accuracy",
    "val_acc": "validation accuracy",
    "train_acc": "training accuracy",
    "test_loss": "test loss",
    "val_loss": "validation loss",
    "train_loss": "training loss",
}


# ---------------------------------------------------------------- data helpers


def label_colors(frame: pd.DataFrame, dataset: str) -> dict:
    """Method label -> RGBA, the same for every figure and race of ``dataset``."""
    labels = set(frame.loc[frame["dataset"] == dataset, "label"])
    colors = {"baseline": BASELINE_COLOR, "teacher": TEACHER_COLOR}
    cmap = matplotlib.colormaps["tab20"]
    others = sorted(label for label in labels if label not in colors)
    for i, label in enumerate(others):
        colors[label] = tuple(cmap(_TAB20_ORDER[i % len(_TAB20_ORDER)]))
    return colors


def dataset_group_rows(frame: pd.DataFrame, dataset: str, group: str) -> pd.DataFrame:
    """``group_rows`` of one dataset (group_rows itself does not look at the dataset)."""
    rows = group_rows(frame[frame["dataset"] == dataset], group)
    if rows.empty:
        raise ValueError(f"no runs of group {group!r} in dataset {dataset!r}")
    return rows


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    return rows[(rows["status"] == "ok") & rows["test_acc_at_best"].notna()]


def group_curves(curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str) -> pd.DataFrame:
    """Curves rows of the runs shown in ``group``, with the group's labels.

    Non-baseline runs are matched on (dataset, group, label, method, net, seed); base runs, whose
    curves rows have group '' and label 'baseline'/'teacher', are matched by (dataset, net, seed)
    and take the label ``group_rows`` gives them (the student's base is 'baseline', the teacher's
    'teacher'), exactly as in the summary tables.
    """
    rows = finished(dataset_group_rows(frame, dataset, group))
    cur = curves[curves["dataset"] == dataset]
    seeds = pd.to_numeric(cur["seed"], errors="coerce")
    parts = []
    for _, row in rows.iterrows():
        mask = (seeds == float(row["seed"])) & (cur["net"] == row["net"])
        if row["method"] == "baseline":
            mask &= cur["method"] == "baseline"
        else:
            mask &= (cur["group"] == row["group"]) & (cur["label"] == row["label"]) & (cur["method"] == row["method"])
        parts.append(cur[mask].assign(label=row["label"], group=group))
    if not parts:
        return cur.iloc[0:0].assign(label=pd.Series(dtype=str))
    out = pd.concat(parts, ignore_index=True)
    return out.drop_duplicates(subset=["label", "seed", "epoch"], keep="first").reset_index(drop=True)


def run_counts(rows: pd.DataFrame, by) -> pd.DataFrame:
    """Per cell (the rows' ``by`` columns): ``runs`` (its summary rows, finished or not), ``not_ok``
    (those whose status is not 'ok', or finished without a test accuracy: :func:`kdpipe.report.frame.report_status`,
    as the tables count them) and ``statuses`` ('1 run failed, 1 run
    missing'), so that a figure showing a mean over the cell's seeds can say which runs it leaves out."""

    grouped = rows.assign(status=report_status(rows)).groupby(by, sort=False)["status"]
    return pd.DataFrame(
        {
            "runs": grouped.size(),
            "not_ok": grouped.agg(lambda status: int((status != "ok").sum())),
            "statuses": grouped.agg(lambda status: runs_text(status_counts(status))),
        }
    )


def seeds_note(count, runs) -> str:
    """'n=1 of 3' for a mean over fewer seeds than its cell has runs; '' when every run is in it."""
    count, runs = int(count), int(runs)
    return f"n={count} of {runs}" if count < runs else ""


def short_cell_lines(counts: pd.DataFrame) -> list[str]:
    """One footnote line per label whose mean leaves runs out, e.g. 'st: mean of 1 of 3 runs (1 run failed,
    1 run missing)'. ``counts``: per label ``count`` (seeds in the mean), ``runs`` and ``statuses``
    (:func:`run_counts`); labels with no seed in the mean are left to the caller's own note."""
    lines = []
    for label, row in counts.iterrows():
        if 0 < row["count"] < row["runs"]:
            why = f" ({row['statuses']})" if row["statuses"] else ""
            lines.append(f"{label}: mean of {int(row['count'])} of {int(row['runs'])} runs{why}")
    return lines


def final_stats(frame: pd.DataFrame, dataset: str, group: str) -> pd.DataFrame:
    """Per label: mean, std (NaN for one seed) and count of best-on-val test accuracy, best first.

    Also the cell's ``runs``, ``not_ok`` and ``statuses`` (:func:`run_counts`): ``count`` below ``runs``
    means the mean leaves out runs that failed or are missing, which the figures must show.
    """
    shown = dataset_group_rows(frame, dataset, group)
    stats = finished(shown).groupby("label")["test_acc_at_best"].agg(["mean", "std", "count"])
    stats = stats.join(run_counts(shown, "label"), how="left")
    return stats.sort_values("mean", ascending=False)


def _order(frame: pd.DataFrame, dataset: str, group: str, present) -> list[str]:
    """Labels best first (by final accuracy) -- the legend order of every figure of a group."""
    ranked = [label for label in final_stats(frame, dataset, group).index if label in set(present)]
    return ranked + sorted(set(present) - set(ranked))


def _pair(group: str) -> tuple[str, str]:
    teacher, _, student = group.partition("-")
    return teacher, student


# ---------------------------------------------------------------- drawing helpers


def _figure(width: float, height: float) -> tuple[Figure, object]:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    return fig, ax


@contextlib.contextmanager
def atomic_path(out, suffix: str) -> Iterator[Path]:
    """A temporary name beside ``out`` (its folder made) for the block to write to: renamed over ``out`` when the
    block ends, removed if it raises. Every report file is written so (figures here, races' GIFs)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp{suffix}")
    try:
        yield tmp
        os.replace(tmp, out)
    finally:
        if tmp.exists():
            tmp.unlink()


def _save(fig: Figure, out_png):
    """``fig`` as a PNG at ``out_png``: a path (written atomically; returned as a Path) or a binary file."""
    if isinstance(out_png, (str, os.PathLike)):
        with atomic_path(out_png, ".png") as tmp, open(tmp, "wb") as fh:
            _save(fig, fh)
        return Path(out_png)
    fig.savefig(out_png, dpi=DPI, bbox_inches="tight", pad_inches=0.15, format="png")
    return out_png


def placeholder(out_png, title: str, message: str) -> Path:
    """A figure that says why there is nothing to show (a partial report still gets every file); ``out_png`` a
    path or a binary file (:func:`kdpipe.report.race.placeholder_gif`)."""
    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(8.0, 3.0)
        ax.set_axis_off()
        ax.set_title(title, loc="left")
        ax.text(0.5, 0.5, message, ha="center", va="center", fontsize=12, color="0.35", transform=ax.transAxes)
        return _save(fig, out_png)


def _line_style(label: str, colors: dict) -> dict:
    color = colors.get(label, (0.2, 0.2, 0.6, 1.0))
    if label == "teacher":
        return {"color": color, "linestyle": (0, (5, 3)), "linewidth": 2.0, "zorder": 2}
    if label == "baseline":
        return {"color": color, "linestyle": "-", "linewidth": 2.2, "zorder": 4}
    return {"color": color, "linestyle": "-", "linewidth": 1.7, "zorder": 3}


def zoom_range(finals, highs, floor: float = 0.0, ceiling: float | None = 100.0) -> tuple[float, float]:
    """An axis window that separates close methods.

    From the 5th percentile of the final values minus a margin up to the largest value shown plus
    a margin. The margin is a third of that spread, at least 0.5 points, so near-identical methods
    still get a readable window; curves from early epochs simply enter from below.
    """
    finals = np.asarray([v for v in finals if np.isfinite(v)], dtype=float)
    highs = np.asarray([v for v in highs if np.isfinite(v)], dtype=float)
    if finals.size == 0:
        return floor, ceiling if ceiling is not None else 1.0
    low = float(np.percentile(finals, 5))
    high = float(max(finals.max(), highs.max() if highs.size else finals.max()))
    margin = max(0.5, (high - low) / 3)
    lo = max(floor, low - margin)
    hi = high + margin
    if ceiling is not None:
        hi = min(hi, ceiling + margin / 2)
    return lo, hi


def _percent_axis(axis) -> None:
    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))


# ---------------------------------------------------------------- figures


def plot_curves(
    curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str, out_png, metric: str = "test_acc"
) -> Path:
    """One line per method label of ``group``: ``metric`` per epoch, mean over seeds, ±std band.

    A label whose curves average fewer seeds than its cell has runs is 'st (n=1 of 3)' in the legend.
    """
    return _plot_metric(curves, frame, dataset, group, out_png, metric)


def plot_losses(curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str, out_png) -> Path:
    """Training loss per epoch (each method's own total objective, so levels differ by method)."""
    return _plot_metric(curves, frame, dataset, group, out_png, "train_loss")


def _plot_metric(curves, frame, dataset, group, out_png, metric) -> Path:
    data = group_curves(curves, frame, dataset, group)
    data = data[data[metric].notna()] if metric in data else data.iloc[0:0]
    teacher, student = _pair(group)
    name = METRIC_NAMES.get(metric, metric)
    title = f"{dataset}: {teacher} → {student}, {name} per epoch"
    if data.empty:
        return placeholder(out_png, title, f"no finished run of this group has {metric} curves yet")
    is_loss = metric.endswith("loss")
    colors = label_colors(frame, dataset)
    stats = data.groupby(["label", "epoch"])[metric].agg(["mean", "std", "count"]).reset_index()
    names = legend_names(data, frame, dataset, group)

    zoomed = not is_loss
    with matplotlib.rc_context(STYLE):
        if zoomed:
            fig = Figure(figsize=(10.0, 4.8), dpi=DPI)
            FigureCanvasAgg(fig)
            overview, ax = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 3.2], "wspace": 0.22})
        else:
            fig, ax = _figure(8.0, 4.8)
            overview = None
        finals, highs = [], []
        for label in _order(frame, dataset, group, stats["label"].unique()):
            s = stats[stats["label"] == label].sort_values("epoch")
            style = _line_style(label, colors)
            ax.plot(s["epoch"], s["mean"], label=names[label], **style)
            if overview is not None:
                overview.plot(s["epoch"], s["mean"], **{**style, "linewidth": style["linewidth"] * 0.7})
            if (s["count"] > 1).any():
                std = s["std"].fillna(0.0)
                lower = s["mean"] - std
                if is_loss:
                    lower = lower.where(lower > 0, s["mean"] * 0.5)
                ax.fill_between(
                    s["epoch"], lower, s["mean"] + std, color=style["color"], alpha=0.15, linewidth=0, zorder=1
                )
            finals.append(s["mean"].iloc[-1])
            highs.append((s["mean"] + s["std"].fillna(0.0)).max())
        epochs = stats["epoch"]
        first, last = int(epochs.min()), int(epochs.max())
        for a in (ax, overview):
            if a is None:
                continue
            a.set_xlim(first, last)
            a.set_xlabel("epoch")
            a.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12 if a is ax else 4))
        if is_loss:
            ax.set_yscale("log")
            ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
            ax.set_ylabel(f"{name} (log scale)")
            fig.text(
                0.5,
                -0.02,
                "each method's loss is its own total training objective; levels are not comparable across methods",
                ha="center",
                va="top",
                fontsize=9,
                color="0.35",
            )
            ax.set_title(title, loc="left")
        else:
            is_acc = metric.endswith("acc")
            lo, hi = zoom_range(finals, highs, ceiling=100.0 if is_acc else None)
            ax.set_ylim(lo, hi)
            if is_acc:
                ax.set_yticks([t for t in ax.get_yticks() if lo - 1e-9 <= t <= 100.0 + 1e-9])
            _percent_axis(ax.yaxis)
            unit = " (%)" if is_acc else ""
            ax.set_ylabel(f"{name}{unit}, mean over seeds")
            ax.set_title("zoomed to the final values", loc="left", fontsize=10, color="0.35")
            low_all = float(stats["mean"].min())
            overview.set_ylim(max(0.0, np.floor(low_all / 10) * 10) if is_acc else low_all, 100.0 if is_acc else hi)
            overview.axhspan(lo, hi, color="gold", alpha=0.25, linewidth=0, zorder=0)
            overview.set_title("all epochs", loc="left", fontsize=10, color="0.35")
            overview.set_ylabel(f"{name}{unit}")
            _percent_axis(overview.yaxis)
            fig.suptitle(title, x=0.07, ha="left", y=1.0, fontsize=STYLE["axes.titlesize"])
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="method", alignment="left")
        return _save(fig, out_png)


def legend_names(data: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str) -> dict:
    """Label -> legend entry of a curves plot: 'st (n=1 of 3)' where the curves average fewer seeds
    than the cell has runs (:func:`seeds_note`), else the label itself."""
    counts = run_counts(dataset_group_rows(frame, dataset, group), "label")
    names = {}
    for label, seeds in data.groupby("label")["seed"].nunique().items():
        note = seeds_note(seeds, counts.at[label, "runs"]) if label in counts.index else ""
        names[label] = f"{label} ({note})" if note else label
    return names


def final_label(row) -> str:
    """The value label of one bar of ``final.png``: '81.00 ± 1.00  (n=3)', '90.00', and with runs
    left out of the mean '81.00 ± 1.00  (n=2 of 3)' or '90.00  (n=1 of 3)'."""
    count = int(row["count"])
    note = seeds_note(count, row["runs"])
    if count > 1 and np.isfinite(row["std"]):
        return f"{row['mean']:.2f} ± {row['std']:.2f}  ({note or f'n={count}'})"
    return f"{row['mean']:.2f}" + (f"  ({note})" if note else "")


def final_notes(stats: pd.DataFrame, shown: pd.DataFrame) -> list[str]:
    """The lines under ``final.png``: labels with no finished run, then one line per label whose mean
    leaves runs out (:func:`short_cell_lines`). ``shown``: the group's summary rows."""
    missing = sorted(set(shown["label"]) - set(stats.index))
    lines = ["no finished run: " + ", ".join(missing)] if missing else []
    return lines + short_cell_lines(stats)


def plot_final(frame: pd.DataFrame, dataset: str, group: str, out_png) -> Path:
    """Horizontal bars: best-on-val test accuracy per label (mean over seeds, ±std), best on top.

    A mean that leaves runs of its cell out says so beside its bar ('n=1 of 3') and in a note under
    the figure with how many runs failed or are missing, as the tables count them.
    """
    drawn = final_figure(frame, dataset, group)
    if drawn is None:
        return placeholder(out_png, _final_title(dataset, group), "no finished run in this group yet")
    return _save(drawn[0], out_png)


def _final_title(dataset: str, group: str) -> str:
    teacher, student = _pair(group)
    return f"{dataset}: {teacher} → {student}, final test accuracy"


def final_figure(frame: pd.DataFrame, dataset: str, group: str):
    """The figure of :func:`plot_final` as ``(fig, ax)``, or None without finished runs."""
    stats = final_stats(frame, dataset, group)
    if stats.empty:
        return None
    title = _final_title(dataset, group)
    notes = final_notes(stats, dataset_group_rows(frame, dataset, group))
    colors = label_colors(frame, dataset)
    stats = stats.iloc[::-1]  # barh draws bottom-up: best ends on top
    std = stats["std"].fillna(0.0)
    lo, hi = zoom_range(stats["mean"] - std, stats["mean"] + std)
    span = hi - lo
    multi = (stats["count"] > 1).any()

    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(8.0, 1.2 + 0.42 * len(stats))
        y = np.arange(len(stats))
        bar_colors = [colors.get(label, (0.2, 0.2, 0.6, 1.0)) for label in stats.index]
        ax.barh(
            y,
            stats["mean"],
            height=0.7,
            color=bar_colors,
            alpha=0.9,
            xerr=std.where(stats["count"] > 1) if multi else None,
            error_kw={"ecolor": "0.2", "capsize": 3, "linewidth": 1},
        )
        ax.set_yticks(y, stats.index)
        ax.grid(False, axis="y")
        for yi, (label, row) in zip(y, stats.iterrows()):
            end = row["mean"] + (row["std"] if row["count"] > 1 and np.isfinite(row["std"]) else 0.0)
            ax.text(max(end, lo) + 0.012 * span, yi, final_label(row), va="center", ha="left", fontsize=10)
        if "baseline" in stats.index:
            base = stats.loc["baseline", "mean"]
            ax.axvline(base, color="black", linestyle=(0, (4, 3)), linewidth=1.2, zorder=5)
            ax.text(base, len(stats) - 0.5, f" baseline {base:.2f}", ha="left", va="bottom", fontsize=9, color="0.2")
        ax.set_xlim(lo, hi + 0.28 * span)
        ax.set_ylim(-0.6, len(stats) + 0.15)
        ax.set_xticks([t for t in ax.get_xticks() if lo - 1e-9 <= t <= 100.0 + 1e-9])
        _percent_axis(ax.xaxis)
        ax.set_xlabel("test accuracy at the best validation epoch (%)" + (", mean ± std over seeds" if multi else ""))
        ax.set_title(title, loc="left")
        if notes:
            ax.annotate(
                "\n".join(notes),
                xy=(0, 0),
                xycoords="axes fraction",
                xytext=(0, -46),
                textcoords="offset points",
                ha="left",
                va="top",
                fontsize=9,
                color="0.35",
            )
        return fig, ax


def plot_cost(frame: pd.DataFrame, dataset: str, out_png) -> Path:
    """Accuracy (best-on-val test accuracy, mean over seeds) against relative training cost.

    One point per (group, label); cost is ``cost_vs_baseline`` (mean epoch time over that of the
    baseline of the same network), so base runs sit at 1. Base runs are drawn as stars and named
    after their network; each group gets its own marker. Labels are placed by ``adjustText`` so
    that none overlaps another label, a point or the title (:func:`label_overlaps` checks it). A
    point whose means leave runs of its cell out is labelled so ('st (n=1 of 3)', :func:`cost_label`).
    """
    drawn = cost_figure(frame, dataset)
    if drawn is None:
        return placeholder(out_png, f"{dataset}: accuracy vs training cost", "no finished run with a cost yet")
    return _save(drawn[0], out_png)


def cost_figure(frame: pd.DataFrame, dataset: str):
    """The figure of :func:`plot_cost` as ``(fig, ax, labels, points)``, or None without finished runs.

    ``labels`` are the point labels (matplotlib texts), ``points`` the scatter collections.
    """
    from adjustText import adjust_text

    rows = frame[(frame["dataset"] == dataset) & (frame["status"] == "ok")]
    rows = rows[rows["test_acc_at_best"].notna() & rows["cost_vs_baseline"].notna()]
    if rows.empty:
        return None
    points = cost_points(frame, dataset, rows)
    colors = label_colors(frame, dataset)
    group_names = [g for g in dict.fromkeys(points["group"]) if g]
    markers = {g: _MARKERS[i % len(_MARKERS)] for i, g in enumerate(group_names)}
    lo, hi = zoom_range(points["acc"], points["acc"])
    cmin, cmax = points["cost"].min(), points["cost"].max()

    with matplotlib.rc_context(STYLE):
        fig, ax = _figure(8.5, 5.5)
        ax.axvline(1.0, color="0.6", linestyle=":", linewidth=1, zorder=1)
        texts, scatters = [], []
        for group in [""] + group_names:
            part = points[points["group"] == group]
            if part.empty:
                continue
            marker = markers.get(group, BASE_MARKER)
            scatters.append(
                ax.scatter(
                    part["cost"],
                    part["acc"],
                    marker=marker,
                    s=150 if marker == BASE_MARKER else 60,
                    c=[colors.get(label, (0.2, 0.2, 0.6, 1.0)) for label in part["label"]],
                    edgecolors="white",
                    linewidths=0.6,
                    zorder=3,
                    label=("base runs" if not group else group.replace("-", " → ")),
                )
            )
            for _, p in part.iterrows():
                texts.append(ax.text(p["cost"], p["acc"], cost_label(p), fontsize=9.5, zorder=4))
        if cmax / max(cmin, 1e-12) > 10:
            ax.set_xscale("log")
        pad = 0.08 * (cmax - cmin) if cmax > cmin else 0.1 * cmax
        ax.set_xlim(
            max(cmin - 2 * pad, 0.0) if ax.get_xscale() == "linear" else cmin / 1.5,
            cmax + 3 * pad if ax.get_xscale() == "linear" else cmax * 1.8,
        )
        ax.set_ylim(lo, hi)
        _percent_axis(ax.yaxis)
        ax.set_xlabel("training cost: mean epoch time relative to the baseline of the same network (×)")
        ax.set_ylabel("test accuracy at the best validation epoch (%)")
        ax.set_title(f"{dataset}: accuracy vs training cost", loc="left")
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False, title="group", markerscale=0.9)
        for handle in ax.get_legend().legend_handles:
            handle.set_color("0.35")
        # adjustText places the labels; a crowded figure gets further passes with more room
        # around each label until nothing overlaps (a pass's leader lines are replaced by the next)
        anchors = [t.get_position() for t in texts]
        for expand in ((1.3, 2.0), (1.5, 2.4), (1.8, 3.0)):
            if not texts:
                break
            _, leaders = adjust_text(
                texts,
                x=points["cost"].to_numpy(),
                y=points["acc"].to_numpy(),
                target_x=[x for x, _ in anchors],  # leader lines end at the labels' own points
                target_y=[y for _, y in anchors],
                ax=ax,
                expand=expand,
                force_static=(0.3, 0.5),
                ensure_inside_axes=True,
                arrowprops={"arrowstyle": "-", "color": "0.55", "linewidth": 0.6},
                min_arrow_len=8,
                iter_lim=300,  # deterministic (a time limit would depend on the machine)
            )
            if not label_overlaps(fig, ax, texts, scatters):
                break
            for leader in leaders:
                leader.remove()
        return fig, ax, texts, scatters


def cost_points(frame: pd.DataFrame, dataset: str, rows: pd.DataFrame) -> pd.DataFrame:
    """One point per (group, label, net) of the finished ``rows``: mean accuracy and cost over seeds,
    ``count`` (seeds in the means) and ``runs`` (the cell's summary rows in ``frame``, finished or not)."""
    points = (
        rows.groupby(["group", "label", "net"], sort=False)
        .agg(acc=("test_acc_at_best", "mean"), cost=("cost_vs_baseline", "mean"), count=("test_acc_at_best", "size"))
        .reset_index()
    )
    runs = run_counts(frame[frame["dataset"] == dataset], ["group", "label", "net"])["runs"]
    return points.join(runs, on=["group", "label", "net"])


def cost_label(point) -> str:
    """A point's label in the cost plot: 'st', 'baseline (resnet20)' for a base run, and with runs of
    the cell left out of its means 'st (n=1 of 3)', 'baseline (resnet20, n=1 of 3)'."""
    note = seeds_note(point["count"], point["runs"])
    if not point["group"]:
        return f"{point['label']} ({point['net']}{', ' + note if note else ''})"
    return f"{point['label']} ({note})" if note else point["label"]


def label_overlaps(fig: Figure, ax, texts, scatters) -> list[str]:
    """What a label overlaps in a drawn figure: another label, any point's marker, or the title.

    Marker boxes are squares of the marker's size around each point, in display pixels.
    """
    renderer = fig.canvas.get_renderer()
    fig.draw_without_rendering()
    boxes = [t.get_window_extent(renderer) for t in texts]
    markers = []
    for collection in scatters:
        sizes = collection.get_sizes()
        for i, xy in enumerate(ax.transData.transform(collection.get_offsets())):
            half = np.sqrt(sizes[i % len(sizes)]) / 2 * fig.dpi / 72  # marker size s is in points²
            markers.append((xy[0] - half, xy[1] - half, xy[0] + half, xy[1] + half))
    title = ax.title.get_window_extent(renderer)
    problems = []
    for i, a in enumerate(boxes):
        name = texts[i].get_text()
        for j in range(i + 1, len(boxes)):
            if a.overlaps(boxes[j]):
                problems.append(f"{name!r} overlaps label {texts[j].get_text()!r}")
        for x0, y0, x1, y1 in markers:
            if a.x0 < x1 and a.x1 > x0 and a.y0 < y1 and a.y1 > y0:
                problems.append(f"{name!r} overlaps a point at ({(x0 + x1) / 2:.0f}, {(y0 + y1) / 2:.0f}) px")
        if a.overlaps(title):
            problems.append(f"{name!r} overlaps the title")
    return problems
