"""Rule train_crd: one CRD student (see kdpipe.methods.crd)."""

from kdpipe.workflow import run_rule

run_rule(snakemake, "crd", t_model=snakemake.input.teacher)  # noqa: F821 (injected by Snakemake)
