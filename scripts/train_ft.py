"""Rule train_ft: one factor-transfer student (see kdpipe.methods.ft)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
