# Plain supervised training: teachers and baseline students.


rule train_base:
    input:
        unpack(lambda w: kw.seed_inputs(config, "train_base", w)),
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
        gres=TRAIN_GRES,
        mem_mb=32000,
        runtime=kw.rule_runtime("train_base"),
    params:
        opts=lambda w: kw.seed_options(config, "train_base", w),
    script:
        "../scripts/train_base.py"


# A pair's teacher_checkpoint: the teacher network's base run directories hold the file, converted and
# evaluated on the dataset, instead of a training run (only for the networks the config imports).
ruleorder: import_teacher > train_base


rule import_teacher:
    input:
        data=lambda w: kw.data_manifest_path(w.dataset),
        src=lambda w: kw.teacher_checkpoint(config, w.net),
    output:
        model="results/{dataset}/base/{net}/seed{seed}/model.pt",
        metrics="results/{dataset}/base/{net}/seed{seed}/metrics.csv",
        record="results/{dataset}/base/{net}/seed{seed}/run.json",
    log:
        "results/logs/{dataset}/base/{net}/seed{seed}.log",
    wildcard_constraints:
        net=kw.imported_nets_pattern(config),
    conda:
        "../environment.yml"
    threads: train_threads()
    resources:
        gpu=TRAIN_GPUS,
        gres=TRAIN_GRES,
        mem_mb=16000,
        runtime=kw.rule_runtime("import_teacher"),
    params:
        opts=lambda w: kw.import_options(config, w.dataset, w.net, w.seed),
    script:
        "../scripts/import_teacher.py"
