"""Rule summary: every run of the config (finished, failed or missing) -> results/summary.csv."""

from kdpipe.summary import write_summary
from kdpipe.workflow import rule_logging

with rule_logging(snakemake):  # noqa: F821 (injected by Snakemake)
    write_summary(
        snakemake.params.runs,  # noqa: F821
        snakemake.output[0],  # noqa: F821
        teachers=snakemake.params.teachers,  # noqa: F821
        dataset_names=snakemake.params.dataset_names,  # noqa: F821
    )
