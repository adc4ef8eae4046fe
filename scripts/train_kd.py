"""Rule train_kd: one student distilled from its teacher (see kdpipe.methods.kd)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
