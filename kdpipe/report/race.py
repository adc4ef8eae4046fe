"""Bar-chart races: every method of a report group, epoch by epoch, as animated GIFs.

Three races per group, the seed's three comparisons (:data:`RACES`): test accuracy, training
loss, and cumulative training time. Rendering uses ``bar_chart_race`` 0.1.0, which rebinds
``matplotlib.pyplot.rcParams`` to a copy of itself when it finishes. Never render a race inside a
long-lived process that draws other figures: run ``python -m kdpipe.report.race ...``
(:func:`main`), one process per animation.

Bars are always proportional to their values on the axis shown. Loss and time axes start at 0;
the accuracy axis is a window (e.g. 90-100 %) so that fractions of a point are visible: a bar is
drawn from the window's left edge, and a value below the window gets no bar but a '◀ 45.2%' marker
at the edge, so it never looks nearly equal to the leader. The package's own bar labels are
integers, so they are switched off and the true values, the epoch label and the progress line are
drawn through the ``period_summary_func`` hook (it runs once per frame; the package clears its
texts each frame).

pandas 2 and 3: with ``interpolate_period=False`` the package fills the gaps of its period column
by ``fillna(method="ffill")``, which pandas 3 removed (a TypeError). :func:`render_race` therefore
passes ``interpolate_period=True``, documented for numeric indexes, whose path is
``Series.interpolate()`` (in both pandas); it indexes the periods 0, 1, 2, ... so that the
interpolated index of a frame is its exact position (period + step / steps_per_period), from which
the hook draws the epoch label (the period's own epoch, as before) and the progress line. Every
other pandas call the package makes with these arguments (``reset_index``, ``reindex``,
``rank(method="first")``, ``clip``, ``interpolate``, ``iloc``) is unchanged in pandas 3.

A method whose mean leaves out runs of its cell (failed or missing, counted as the tables count
them) is named 'st (n=1 of 3)' beside its bar, and a note under the bars says how many runs failed
or are missing (:func:`race_seeds`, passed to :func:`render_race` as ``seeds``), so a mean over one
seed of three never passes for a complete one.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from . import RACES, race_metric


class NoCurves(ValueError):
    """A group of the summary with no finished run that has the race's curves (a partial report)."""


def race_frame(
    curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str, metric: str = "test_acc"
) -> pd.DataFrame:
    """Epoch x method table of one race's values (mean over seeds), the input of :func:`render_race`.

    Index: the union of the epoch numbers of the group's runs, each run on its own epoch numbers
    (no re-alignment: a run that stops early, or has fewer epochs, keeps its last value, forward
    filled, until the race ends). Per method label, each seed's series is forward-filled over that
    union first and then averaged, so a seed that ended early still counts with its final value.
    For a cumulative metric (training time) each seed's series is summed over its epochs first.
    Epochs before a run's first reported epoch are 0 (no bar). Columns: method labels, best value
    at the last epoch first. Note the accuracy race shows last-epoch test accuracy, not the
    best-on-validation number of ``plot_final`` and the tables, so its final standings can differ.
    How many seeds each mean has, against the runs of its cell, is :func:`race_seeds`.
    """
    spec = race_metric(metric)
    race = seed_series(curves, frame, dataset, group, metric).T.groupby(level="label").mean().T
    order = race.iloc[-1].sort_values(ascending=not spec.higher_is_better, kind="stable").index.tolist()
    race = race[order].fillna(0.0)
    race.index.name = "epoch"
    race.columns.name = None
    return race


def seed_series(
    curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str, metric: str = "test_acc"
) -> pd.DataFrame:
    """Epoch x (label, seed): each run's race values on the union of epochs, forward-filled (summed
    over epochs first for a cumulative metric) -- what :func:`race_frame` averages per label."""
    from .plots import group_curves

    spec = race_metric(metric)
    data = group_curves(curves, frame, dataset, group)
    if spec.column in data:
        data = data[pd.to_numeric(data[spec.column], errors="coerce").notna()]
    else:
        data = data.iloc[0:0]
    if data.empty:
        raise NoCurves(f"no {spec.column} curves for group {group!r} of dataset {dataset!r}")
    data = data.assign(epoch=data["epoch"].astype(int), value=data[spec.column].astype(float))
    wide = data.pivot_table(index="epoch", columns=["label", "seed"], values="value", aggfunc="mean")
    wide = wide.sort_index()
    if spec.cumulative:
        wide = wide.cumsum()  # NaN epochs (before a run starts or after it ends) are skipped
    return wide.ffill()


def race_seeds(
    curves: pd.DataFrame, frame: pd.DataFrame, dataset: str, group: str, metric: str = "test_acc"
) -> pd.DataFrame:
    """Per label of the group: ``count`` (seeds in its race mean; 0 for a label not in the race) and
    its cell's ``runs``, ``not_ok`` and ``statuses`` (:func:`kdpipe.report.plots.run_counts`: summary
    rows whose status is not 'ok', as the tables count them). ``count`` below ``runs``: runs missing."""
    from .plots import dataset_group_rows, run_counts

    seeds = seed_series(curves, frame, dataset, group, metric).columns.to_frame(index=False)
    counts = run_counts(dataset_group_rows(frame, dataset, group), "label")
    return counts.assign(count=seeds.groupby("label").size().reindex(counts.index, fill_value=0).astype(int))


def race_names(labels, seeds: pd.DataFrame | None) -> list[str]:
    """The names beside the bars: the labels, 'st (n=1 of 3)' for a mean that leaves runs out."""
    from .plots import seeds_note

    names = []
    for label in labels:
        known = seeds is not None and label in seeds.index
        note = seeds_note(seeds.at[label, "count"], seeds.at[label, "runs"]) if known else ""
        names.append(f"{label} ({note})" if note else label)
    return names


def race_footnote(seeds: pd.DataFrame | None) -> list[str]:
    """The lines under the bars: labels with no finished run (so not in the race), then one line per
    label whose mean leaves runs out, with how many failed or are missing (as under ``final.png``)."""
    from .plots import short_cell_lines

    if seeds is None:
        return []
    absent = seeds[(seeds["count"] == 0) & (seeds["not_ok"] == seeds["runs"])].index
    lines = ["no finished run: " + ", ".join(sorted(absent))] if len(absent) else []
    return lines + short_cell_lines(seeds)


def expected_frames(n_epochs: int, steps_per_period: int) -> int:
    """Frames in the GIF that :func:`render_race` writes for ``n_epochs`` periods.

    bar_chart_race 0.1.0 (``prepare_wide_data``) places period i at step i * steps_per_period and
    interpolates between them, giving (n_epochs - 1) * steps_per_period + 1 frames: the first period
    shown alone, then steps_per_period frames per further period, ending exactly on the last one.
    Pillow merges consecutive identical frames into one (adding their durations): the final hold of
    :func:`render_race` relies on that and adds no frame, while a progress line drawn on every
    animated frame keeps them distinct even when no bar moves for a whole epoch.
    """
    if n_epochs < 1 or steps_per_period < 1:
        raise ValueError("n_epochs and steps_per_period must be at least 1")
    return (n_epochs - 1) * steps_per_period + 1


def race_window(race_df: pd.DataFrame, metric: str = "test_acc") -> tuple[float, float]:
    """The x range shown.

    Accuracy: a little below the lowest final value (rounded down to a whole point) up to 100.
    Loss and time: 0 up to the largest value of the race.
    """
    values = race_df.to_numpy(dtype=float)
    top = float(np.nanmax(values)) if np.isfinite(values).any() else 1.0
    if not race_metric(metric).window:
        return 0.0, top if top > 0 else 1.0
    final = race_df.iloc[-1].astype(float)
    spread = float(final.max() - final.min())
    lo = float(final.min()) - max(1.0, 0.35 * spread)
    lo = max(0.0, float(math.floor(lo)))
    return lo, max(100.0, top)


# A value below the window is drawn at the window's edge, minus this fraction of its distance
# below: invisible on screen, but it keeps the ranking and lets the labels recover the true value.
_BELOW = 1e-6


def bar_values(values, lo: float) -> np.ndarray:
    """What the bars are drawn to: the values, except that a value below the window's left edge
    ``lo`` sits (a millionth of its distance) just below the edge, so it shows no bar at all."""
    values = np.asarray(values, dtype=float)
    return np.where(values >= lo, values, lo - _BELOW * (lo - values))


def true_value(drawn: float, lo: float) -> float:
    """Inverse of :func:`bar_values` (the labels show true values)."""
    return drawn if drawn >= lo else lo - (lo - drawn) / _BELOW


def epoch_label(epoch) -> str:
    """The label at the top right of a race frame, e.g. 'epoch 12'."""
    return f"epoch {float(epoch):.0f}"


def render_race(
    race_df: pd.DataFrame,
    out_gif,
    title: str,
    steps_per_period: int = 4,
    period_length_ms: int = 500,
    dpi: int = 80,
    colors: dict | None = None,
    hold_periods: int = 2,
    metric: str = "test_acc",
    seeds: pd.DataFrame | None = None,
) -> int:
    """Write an animated GIF of ``race_df`` (rows = epochs, columns = methods); returns its frame count.

    Bars are sorted best on top (highest accuracy; lowest loss or time) and labelled with the method
    name and the true value; ``'epoch N'`` counts up at the top right. The x axis is linear and fixed
    to :func:`race_window`: bars start at its left edge, so their lengths are proportional to their
    values on the axis shown; a value below the window gets a '◀ value' marker at the edge instead
    of a bar. Each epoch lasts ``period_length_ms`` over ``steps_per_period`` frames, and the last
    frame is held for ``hold_periods`` more periods (the GIF loops). ``colors`` maps labels to
    colours: pass ``plots.label_colors(frame, dataset)`` to match the dataset's static figures.
    ``seeds`` (:func:`race_seeds`) names a mean that leaves runs of its cell out 'st (n=1 of 3)' and
    lists such labels under the bars (:func:`race_footnote`), which then get the room for it.
    The file is written under a temporary name in the same folder and moved into place.
    """
    import bar_chart_race as bcr
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from PIL import Image, ImageSequence

    from .plots import atomic_path, label_colors

    spec = race_metric(metric)
    if race_df.empty or race_df.shape[1] == 0:
        raise ValueError("empty race")
    race_df = race_df.astype(float)
    labels = [str(c) for c in race_df.columns]
    race_df = race_df.set_axis(labels, axis=1)
    if colors is None:
        colors = label_colors(pd.DataFrame({"dataset": "", "label": labels}), "")
    bar_colors = [colors.get(label, (0.2, 0.2, 0.6, 1.0)) for label in labels]
    footnote = race_footnote(seeds)
    labels = race_names(labels, seeds)
    race_df = race_df.set_axis(labels, axis=1)
    animated_periods = len(race_df) - 1  # periods the bars move through; the hold follows
    if hold_periods > 0:
        last = race_df.iloc[[-1] * hold_periods]
        race_df = pd.concat([race_df, last])
    epochs = list(race_df.index)

    lo, hi = race_window(race_df, metric)
    # indexed by period position 0, 1, 2, ...: bar_chart_race interpolates it (interpolate_period=True),
    # so each frame's row is named by its exact position, which gives its epoch and its progress
    positions = pd.Index(np.arange(len(race_df), dtype=float))
    plotted = pd.DataFrame(bar_values(race_df.to_numpy(), lo), index=positions, columns=race_df.columns)
    span = hi - lo
    right = hi + 0.2 * span  # room for the value labels
    n = len(labels)
    foot = 0.2 * len(footnote) + 0.12 if footnote else 0.0  # inches under the tick labels for the note
    height = 1.35 + 0.42 * n + foot
    fig = Figure(figsize=(8.0, height), dpi=dpi)
    FigureCanvasAgg(fig)
    longest = max(len(label) for label in labels)
    left = min(0.35, (0.25 + 0.085 * longest) / 8.0)
    top = 1 - 0.95 / height
    bottom = (0.42 + foot) / height
    ax = fig.add_axes([left, bottom, 0.97 - left, top - bottom])
    ax.set_xlim(lo, right)
    ax.set_ylim(0.4, n + 0.6)
    ax.set_xticks([t for t in ax.get_xticks() if lo - 1e-9 <= t <= hi + 1e-9])
    ax.xaxis.set_major_formatter(lambda v, _: f"{v:g}")
    ax.tick_params(length=0, labelsize=11, pad=4)
    ax.grid(True, axis="x", color="white", linewidth=1.2)
    ax.set_axisbelow(True)
    ax.set_facecolor("0.93")
    for spine in ax.spines.values():
        spine.set_visible(False)
    fig.text(left, 1 - 0.12 / height, title, ha="left", va="top", fontsize=14, weight="bold")
    fig.text(left, 1 - 0.5 / height, spec.subtitle, ha="left", va="top", fontsize=10.5, color="0.35")
    if footnote:
        fig.text(left, 0.1 / height, "\n".join(footnote), ha="left", va="bottom", fontsize=10, color="0.35")

    # a thin progress line along the top of the bars: it makes every animated frame distinct (so the
    # GIF has exactly expected_frames() frames even when no bar moves) and stops during the hold
    axes_width = 0.97 - left
    progress_line = Line2D(
        [left, left], [top, top], transform=fig.transFigure, color="0.45", linewidth=2.5, solid_capstyle="butt"
    )
    fig.add_artist(progress_line)

    def frame_overlay(values, ranks):
        """Per frame: the progress line, the true value labels, and (returned) the epoch label."""
        position = float(values.name)  # period + step / steps_per_period
        period = min(int(math.floor(position + 1e-9)), len(epochs) - 1)
        progress = min(1.0, position / animated_periods) if animated_periods else 1.0
        progress_line.set_xdata([left, left + progress * axes_width])
        for label in values.index:
            value, rank = values[label], ranks[label]
            if not (np.isfinite(value) and np.isfinite(rank)):
                continue
            text = spec.fmt.format(true_value(value, lo))
            if value < lo:
                ax.text(lo + 0.004 * span, rank, "◀ " + text, ha="left", va="center", fontsize=11, color="0.3")
            else:
                ax.text(value + 0.008 * span, rank, text, ha="left", va="center", fontsize=11)
        return {
            "x": 1.0,
            "y": 1.015,
            "s": epoch_label(epochs[period]),
            "ha": "right",
            "va": "bottom",
            "size": 15,
            "weight": "bold",
            "color": "0.25",
        }

    with atomic_path(out_gif, ".gif") as tmp:
        bcr.bar_chart_race(
            plotted,
            filename=str(tmp),
            orientation="h",
            sort="desc" if spec.higher_is_better else "asc",
            fixed_order=False,
            fixed_max=True,
            steps_per_period=steps_per_period,
            period_length=period_length_ms,
            interpolate_period=True,  # not fillna(method="ffill"): gone in pandas 3 (module docstring)
            label_bars=False,
            bar_size=0.8,
            period_label=False,  # drawn by frame_overlay: the package would print the interpolated position
            period_summary_func=frame_overlay,
            cmap=bar_colors,
            writer="pillow",
            fig=fig,
            bar_kwargs={"alpha": 0.9, "ec": "white"},
        )
        with Image.open(tmp) as image:
            frames = sum(1 for _ in ImageSequence.Iterator(image))
    return frames


def render_group_race(
    summary: str | Path,
    dataset: str,
    group: str,
    out_gif,
    metric: str = "test_acc",
    steps_per_period: int = 4,
    period_length_ms: int = 500,
    dpi: int = 80,
) -> int:
    """Summary CSV -> one race GIF of one group, with the dataset's colours; returns the frame count.  A group
    with nothing to race yet (none of its runs finished: ``report.partial``) gets a one-frame GIF that says so,
    as its PNGs get placeholders; a group the summary does not hold is an error."""
    from .frame import load_curves, load_summary
    from .plots import label_colors

    frame = load_summary(summary)
    frame = frame[frame["dataset"] == dataset]
    curves = load_curves(frame)
    teacher, _, student = group.partition("-")
    title = f"{dataset}: {teacher} → {student}"
    try:
        race = race_frame(curves, frame, dataset, group, metric)
    except NoCurves:
        return placeholder_gif(out_gif, title, f"no finished run of this group has {race_metric(metric).column} yet")
    return render_race(
        race,
        out_gif,
        title,
        steps_per_period=steps_per_period,
        period_length_ms=period_length_ms,
        dpi=dpi,
        colors=label_colors(frame, dataset),
        metric=metric,
        seeds=race_seeds(curves, frame, dataset, group, metric),
    )


def placeholder_gif(out_gif, title: str, message: str) -> int:
    """A one-frame GIF that says why there is no race (:func:`kdpipe.report.plots.placeholder`, as a GIF);
    written atomically; returns 1, its frame count."""
    import io

    from PIL import Image

    from .plots import atomic_path, placeholder

    png = io.BytesIO()
    placeholder(png, title, message)
    with atomic_path(out_gif, ".gif") as tmp, Image.open(png) as image:
        image.convert("RGB").save(tmp, format="GIF")
    return 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m kdpipe.report.race", description="Render one bar-chart race of one report group as a GIF."
    )
    parser.add_argument("--summary", required=True, help="results/summary.csv")
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--group", required=True, help="'<teacher>-<student>', e.g. resnet110-resnet20")
    parser.add_argument("--out", required=True, help="GIF to write")
    parser.add_argument(
        "--metric", choices=tuple(RACES), default="test_acc", help="what the bars show (default test_acc)"
    )
    parser.add_argument("--steps-per-period", type=int, default=4, help="frames per epoch (default 4)")
    parser.add_argument("--period-ms", type=int, default=500, help="milliseconds per epoch (default 500)")
    parser.add_argument("--dpi", type=int, default=80)
    args = parser.parse_args(argv)
    try:
        frames = render_group_race(
            args.summary,
            args.dataset,
            args.group,
            args.out,
            metric=args.metric,
            steps_per_period=args.steps_per_period,
            period_length_ms=args.period_ms,
            dpi=args.dpi,
        )
    except (ValueError, KeyError, OSError, RuntimeError) as err:
        print(f"race: {err}", file=sys.stderr)
        return 1
    print(f"race: wrote {args.out} ({frames} frames)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
