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
        mem_mb=32000,
        runtime=960,
    params:
        opts=lambda w: kw.kd_options(
            config, w.dataset, w.variant, w.teacher, w.student, w.seed
        ),
    script:
        "../scripts/train_kd.py"
