# resources.seeds_together: for each training rule of kw.SEEDED_RULES, a rule <rule>_seeds that trains
# every seed's run of the same other wildcards in one job and one process, their steps (CUDA graphs)
# interleaved on one GPU, each seed on its own stream (kdpipe.runner.run_together).  The same run
# directories, files and results as <rule>'s jobs, which it replaces (a sweep's too: train_kd_sweep_seeds).
if config["resources"]["seeds_together"]:

    # an imported teacher's base run directories stay import_teacher's, as in base.smk
    ruleorder: import_teacher > train_base_seeds

    for seeded in kw.SEEDED_RULES:

        rule:
            name:
                f"{seeded}_seeds"
            input:
                unpack(lambda w, seeded=seeded: kw.seeds_inputs(config, seeded, w)),
            output:
                **kw.seeds_outputs(getattr(rules, seeded).output, config["seeds"]),
            log:
                kw.seeds_log(getattr(rules, seeded).log[0]),
            conda:
                "../environment.yml"
            threads: train_threads()
            resources:
                gpu=TRAIN_GPUS,
                gres=TRAIN_GRES,
                mem_mb=32000,
                runtime=kw.rule_runtime(f"{seeded}_seeds"),
            params:
                seeds=config["seeds"],
                opts=lambda w, seeded=seeded: kw.seeds_options(config, seeded, w),
            script:
                "../scripts/train_seeds.py"

        workflow.ruleorder(f"{seeded}_seeds", seeded)
