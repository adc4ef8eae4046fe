"""Rule <rule>_seeds (resources.seeds_together, rules/seeds.smk): every seed's run of a training rule,
trained together in one process (see kdpipe.runner.run_together)."""

from kdpipe.jobs import train_rule

train_rule(snakemake)
