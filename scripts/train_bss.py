"""Rule train_bss: one BSS / born-again generation (see kdpipe.methods.bss)."""

from kdpipe.jobs import run_rule

run_rule(snakemake, "bss", t_model=snakemake.input.teacher)
