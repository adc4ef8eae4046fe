"""Rule train_kd: one student distilled from its teacher (see kdpipe.methods.kd)."""

from kdpipe.jobs import student_rule

student_rule(snakemake, "kd")
