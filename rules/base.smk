# Plain supervised training: teachers and baseline students.


rule train_base:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
    output:
        model="results/{dataset}/base/{net}/seed{seed}/model.pt",
        metrics="results/{dataset}/base/{net}/seed{seed}/metrics.csv",
        record="results/{dataset}/base/{net}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/base/{net}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        mem_mb=32000,
        runtime=720,
    params:
        opts=lambda w: kw.base_options(config, w.dataset, w.net, w.seed),
    script:
        "../scripts/train_base.py"
