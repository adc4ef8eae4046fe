"""Rule teacher_cache: run the frozen teacher on every view of every training image (kdpipe.cache)."""

from kdpipe.jobs import cache_decision, run_rule

w = snakemake.wildcards
use, why = cache_decision(snakemake.config, w.dataset, w.teacher, w.seed)
run_rule(snakemake, "teacher_cache", message=f"teacher cache: {why}", t_model=snakemake.input.teacher)
