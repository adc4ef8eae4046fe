"""Rule train_base: one network trained from scratch (see kdpipe.methods.base)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
