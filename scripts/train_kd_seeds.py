"""Rule train_kd_seeds: every seed's student of one kd run, trained together in one process
(resources.seeds_together; see kdpipe.runner.run_together)."""

from kdpipe.jobs import students_together_rule

students_together_rule(snakemake, "kd")
