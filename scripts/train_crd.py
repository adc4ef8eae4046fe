"""Rule train_crd: one CRD student (see kdpipe.methods.crd)."""

from kdpipe.jobs import student_rule

student_rule(snakemake, "crd")
