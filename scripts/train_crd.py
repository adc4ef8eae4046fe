"""Rule train_crd: one CRD student (see kdpipe.methods.crd)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
