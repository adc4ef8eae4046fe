# Deep mutual learning cohorts: no teacher, every peer reported (net1, net2, ...).


rule train_dml:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
    output:
        model="results/{dataset}/dml/{cohort}/seed{seed}/model.pt",
        metrics="results/{dataset}/dml/{cohort}/seed{seed}/metrics.csv",
        record="results/{dataset}/dml/{cohort}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/dml/{cohort}/seed{seed}.log",
    wildcard_constraints:
        cohort=r"[A-Za-z0-9_]+(-[A-Za-z0-9_]+)+",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=1440,
    params:
        opts=lambda w: kw.dml_options(config, w.dataset, w.cohort, w.seed),
    script:
        "../scripts/train_dml.py"
