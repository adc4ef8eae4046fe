"""Rule train_crd: one CRD student (see kdpipe.methods.crd)."""

from kdpipe.workflow import student_rule

student_rule(snakemake, "crd")
