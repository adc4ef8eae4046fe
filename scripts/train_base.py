"""Rule train_base: one network trained from scratch (see kdpipe.methods.base)."""

from kdpipe.jobs import run_rule

run_rule(snakemake, "base")
