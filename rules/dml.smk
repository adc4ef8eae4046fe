# Deep mutual learning cohorts: no teacher, every peer reported (net1, net2, ...).


rule train_dml:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_dml", w)),
    output:
        model="results/{dataset}/dml/{cohort}/seed{seed}/model.pt",
        metrics="results/{dataset}/dml/{cohort}/seed{seed}/metrics.csv",
        record="results/{dataset}/dml/{cohort}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/dml/{cohort}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=kw.rule_runtime("train_dml"),
    params:
        opts=lambda w: kw.seed_options(config, "train_dml", w),
    script:
        "../scripts/train_dml.py"
