"""Rule train_bss: one BSS / born-again generation (see kdpipe.methods.bss)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
