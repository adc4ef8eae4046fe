# Boundary supporting samples as born-again generations: gen0 (the base model) -> gen1 -> ...
# Each generation is its own node whose input is the previous generation's model.pt, so
# retraining generation g re-runs g+1, ... and nothing before it.


rule train_bss:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
        teacher=lambda w: kw.bss_teacher(config, w.dataset, w.chain, w.seed, w.gen),
    output:
        model="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/model.pt",
        metrics="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/metrics.csv",
        record="results/{dataset}/bss/{chain}/seed{seed}/gen{gen}/run.json",
    log:
        "results/logs/{dataset}/bss/{chain}/seed{seed}/gen{gen}.log",
    wildcard_constraints:
        chain=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)?",
        gen=r"[1-9]\d*",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=1440,
    params:
        opts=lambda w: kw.bss_options(config, w.dataset, w.chain, w.seed, w.gen),
    script:
        "../scripts/train_bss.py"
