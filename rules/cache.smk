# The exact teacher cache: teacher outputs for every (training image, view), built once per
# teacher and read by the students whose method needs only logits or pooled embeddings.


rule teacher_cache:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
        teacher="results/{dataset}/base/{teacher}/seed{seed}/model.pt",
    output:
        cache="results/{dataset}/cache/{teacher}/seed{seed}/cache.pt",
        manifest="results/{dataset}/cache/{teacher}/seed{seed}/manifest.json",
    log:
        "results/logs/{dataset}/cache/{teacher}/seed{seed}.log",
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=64000,
        runtime=kw.rule_runtime("teacher_cache"),
    params:
        opts=lambda w: kw.cache_options(config, w.dataset, w.teacher, w.seed),
    script:
        "../scripts/teacher_cache.py"
