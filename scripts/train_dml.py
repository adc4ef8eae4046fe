"""Rule train_dml: one deep-mutual-learning cohort (see kdpipe.methods.dml)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
