"""Aggregation of finished runs: tables against published numbers, plots, bar-chart races.

This module holds only declarations (no pandas, matplotlib or torch), so that the workflow can
read them when it parses the Snakefile.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RaceMetric:
    """One race: which ``metrics.csv`` column, how it is shown and which end is best."""

    name: str  # file stem: results/race/{dataset}/{group}/{name}.gif
    column: str  # metrics.csv column
    subtitle: str
    fmt: str  # value label format
    higher_is_better: bool
    cumulative: bool = False  # per-epoch values summed over epochs (training time)
    window: bool = False  # zoomed axis window below 100 (accuracy); otherwise the axis starts at 0


#: The races of every report group, in the order the report lists them.
RACES: dict[str, RaceMetric] = {
    m.name: m
    for m in (
        RaceMetric(
            "test_acc", "test_acc", "test accuracy (%), mean over seeds; best on top", "{:.1f}%", True, window=True
        ),
        RaceMetric(
            "train_loss",
            "train_loss",
            "training loss (each method's whole objective), mean over seeds; lowest on top",
            "{:.3g}",
            False,
        ),
        RaceMetric(
            "train_time",
            "epoch_time_s",
            "cumulative training time (s), mean over seeds; fastest on top",
            "{:.1f} s",
            False,
            cumulative=True,
        ),
    )
}


def race_metric(name: str) -> RaceMetric:
    if name not in RACES:
        raise ValueError(f"race metric: unknown {name!r}; choose one of {', '.join(RACES)}")
    return RACES[name]
