"""Rule summary: every planned run (finished, failed or missing) -> results/summary.csv."""

from kdpipe.summary import write_summary
from kdpipe.jobs import rule_logging

with rule_logging(snakemake):
    write_summary(snakemake.params.runs, snakemake.output[0], teachers=snakemake.params.teachers)
