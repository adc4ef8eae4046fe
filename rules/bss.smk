# Boundary supporting samples as born-again generations: gen0 (the base model) -> gen1 -> ...
# Each generation is its own node whose input is the previous generation's model.pt, so
# retraining generation g re-runs g+1, ... and nothing before it.


rule train_bss:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_bss", w)),
    output:
        model="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/model.pt",
        metrics="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/metrics.csv",
        record="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/run.json",
    log:
        "results/logs/{dataset}/bss/{chain}/seed{seed}/gen{gen}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=kw.rule_runtime("train_bss"),
    params:
        opts=lambda w: kw.seed_options(config, "train_bss", w),
    script:
        "../scripts/train_bss.py"
