"""Rule train_ft: one factor-transfer student (see kdpipe.methods.ft)."""

from kdpipe.jobs import run_rule

run_rule(
    snakemake,
    "ft",
    t_model=snakemake.input.teacher,
    paraphraser=snakemake.input.paraphraser,
)
