"""Rule train_dml: one deep-mutual-learning cohort (see kdpipe.methods.dml)."""

from kdpipe.jobs import run_rule

run_rule(snakemake, "dml")
