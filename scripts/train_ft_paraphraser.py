"""Rule ft_paraphraser: FT's paraphraser on one teacher (see kdpipe.methods.ft)."""

from kdpipe.jobs import run_rule

run_rule(snakemake, "ft_paraphraser", t_model=snakemake.input.teacher)
