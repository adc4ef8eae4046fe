"""Rule tables: results/summary.csv -> results/tables/{dataset}.md/.csv/.tex (kdpipe.report.tables)."""

from kdpipe.report.frame import load_summary
from kdpipe.report.reference import load_reference
from kdpipe.report.tables import write_tables
from kdpipe.jobs import rule_logging

with rule_logging(snakemake):
    out = snakemake.output
    reference = load_reference() if snakemake.params.published else None
    write_tables(
        load_summary(snakemake.input[0]),
        snakemake.wildcards.dataset,
        out.md,
        out.csv,
        out.tex,
        reference=reference,
    )
