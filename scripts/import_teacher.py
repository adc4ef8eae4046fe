"""Rule import_teacher: a pair's teacher_checkpoint, converted and evaluated (see kdpipe.methods.imported)."""

from kdpipe.jobs import run_rule

run_rule(snakemake, "import_teacher", src=snakemake.input.src)
