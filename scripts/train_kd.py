"""Rule train_kd: one student distilled from its teacher (see kdpipe.methods.kd)."""

from kdpipe.workflow import run_rule

run_rule(snakemake, "kd", t_model=snakemake.input.teacher)  # noqa: F821 (injected by Snakemake)
