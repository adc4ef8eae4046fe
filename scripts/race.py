"""Rule race: one bar-chart-race GIF, rendered in this job's own process (kdpipe.report.race)."""

from kdpipe.report.race import render_group_race
from kdpipe.jobs import rule_logging

with rule_logging(snakemake):
    w, params = snakemake.wildcards, snakemake.params
    render_group_race(
        snakemake.input[0],
        w.dataset,
        w.group,
        snakemake.output[0],
        metric=w.metric,
        steps_per_period=params.steps_per_period,
        period_length_ms=params.period_ms,
    )
