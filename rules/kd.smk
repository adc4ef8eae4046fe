# The distillation zoo: one student node per (dataset, mode, pair, seed).  Its input is the
# teacher's model.pt from train_base, so a retrained teacher re-runs exactly its students.


rule train_kd:
    input:
        unpack(
            lambda w: kw.student_inputs(
                config,
                "train_kd",
                w.dataset,
                kw.split_variant(w.variant)[0],
                w.teacher,
                w.seed,
            )
        ),
    output:
        model="results/{dataset}/kd-{variant}/{teacher}-{student}/seed{seed}/model.pt",
        metrics="results/{dataset}/kd-{variant}/{teacher}-{student}/seed{seed}/metrics.csv",
        record="results/{dataset}/kd-{variant}/{teacher}-{student}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/kd-{variant}/{teacher}-{student}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=960,
    params:
        opts=lambda w: kw.kd_options(
            config, w.dataset, w.variant, w.teacher, w.student, w.seed
        ),
    script:
        "../scripts/train_kd.py"


# kd.sweep: one node per swept value (or grid point) of a mode, in <pair>/<key>~<value>/seed<s>;
# the same job as train_kd, its options those of the mode's own run plus the point's values.
use rule train_kd as train_kd_sweep with:
    output:
        model="results/{dataset}/kd-{variant}/{teacher}-{student}/{sweep}/seed{seed}/model.pt",
        metrics="results/{dataset}/kd-{variant}/{teacher}-{student}/{sweep}/seed{seed}/metrics.csv",
        record="results/{dataset}/kd-{variant}/{teacher}-{student}/{sweep}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/kd-{variant}/{teacher}-{student}/{sweep}/seed{seed}.log",
    params:
        opts=lambda w: kw.kd_options(
            config,
            w.dataset,
            w.variant,
            w.teacher,
            w.student,
            w.seed,
            kw.sweep_point(config, w.variant, w.sweep),
        ),


# resources.seeds_together: all seeds' students of one kd run in one job and one process, their
# steps (CUDA graphs) interleaved on the GPU, each seed on its own stream (kdpipe.runner.run_together);
# the same run directories, files and results as train_kd's.
if config["resources"]["seeds_together"]:

    ruleorder: train_kd_seeds > train_kd

    rule train_kd_seeds:
        input:
            unpack(
                lambda w: kw.seeds_together_inputs(
                    config,
                    "train_kd",
                    w.dataset,
                    kw.split_variant(w.variant)[0],
                    w.teacher,
                )
            ),
        output:
            models=expand(
                "results/{{dataset}}/kd-{{variant}}/{{teacher}}-{{student}}/seed{seed}/model.pt",
                seed=config["seeds"],
            ),
            metrics=expand(
                "results/{{dataset}}/kd-{{variant}}/{{teacher}}-{{student}}/seed{seed}/metrics.csv",
                seed=config["seeds"],
            ),
            records=expand(
                "results/{{dataset}}/kd-{{variant}}/{{teacher}}-{{student}}/seed{seed}/run.json",
                seed=config["seeds"],
            ),
        log:
            "results/logs/{dataset}/kd-{variant}/{teacher}-{student}/seeds.log",
        conda:
            "../environment.yml"
        threads: train_threads()
        resources:
            gpu=TRAIN_GPUS,
            gres=TRAIN_GRES,
            mem_mb=32000,
            runtime=960,
        params:
            seeds=config["seeds"],
            opts=lambda w: {
                str(seed): kw.kd_options(
                    config, w.dataset, w.variant, w.teacher, w.student, seed
                )
                for seed in config["seeds"]
            },
        script:
            "../scripts/train_kd_seeds.py"
