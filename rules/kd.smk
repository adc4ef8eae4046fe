# The distillation zoo: one student node per (dataset, mode, pair, seed).  Its input is the
# teacher's model.pt from train_base, so a retrained teacher re-runs exactly its students.


rule train_kd:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_kd", w)),
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
        runtime=kw.rule_runtime("train_kd"),
    params:
        opts=lambda w: kw.seed_options(config, "train_kd", w),
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
        opts=lambda w: kw.seed_options(config, "train_kd_sweep", w),
