"""Rule train_ft: one factor-transfer student (see kdpipe.methods.ft)."""

from kdpipe.workflow import run_rule

run_rule(
    snakemake,  # noqa: F821 (injected by Snakemake)
    "ft",
    t_model=snakemake.input.teacher,  # noqa: F821
    paraphraser=snakemake.input.paraphraser,  # noqa: F821
)
